"""JustNews ModelStore: versioned, checksummed, atomically published base models and LoRA adapters.

No Ray imports here: the store is used by the CLI, training, tests and the serving layer alike.
"""

from .errors import (AdapterValidationError, ChecksumError, ManifestError, ModelStoreError, NotFoundError,
                     RefError, SourceError, UnsafeWeightsError, VariantUnavailableError, VersionExistsError)
from .manifest import AdapterInfo, FileEntry, Manifest, ModelMetadata, Source, TokenizerInfo
from .refs import AdapterRef, BaseRef, ModelRef, parse_ref
from .store import ModelStore, Resolved, VerifyReport, default_root

__all__ = [
    "ModelStore", "Resolved", "VerifyReport", "default_root",
    "AdapterRef", "BaseRef", "ModelRef", "parse_ref",
    "Manifest", "ModelMetadata", "FileEntry", "Source", "TokenizerInfo", "AdapterInfo",
    "ModelStoreError", "RefError", "NotFoundError", "ManifestError", "ChecksumError", "VersionExistsError",
    "UnsafeWeightsError", "AdapterValidationError", "SourceError", "VariantUnavailableError",
]
