"""Domain errors of the ModelStore.

Every error names the offending value so an operator can act on the message alone. The HTTP layer
(``deployments/ingress``) maps these to status codes; nothing here knows about HTTP.
"""

from __future__ import annotations

__all__ = [
    "ModelStoreError",
    "RefError",
    "NotFoundError",
    "ManifestError",
    "ChecksumError",
    "VersionExistsError",
    "UnsafeWeightsError",
    "AdapterValidationError",
    "SourceError",
    "VariantUnavailableError",
]


class ModelStoreError(Exception):
    """Base class of every ModelStore error."""


class RefError(ModelStoreError, ValueError):
    """A model reference string is malformed (traversal, absolute path, empty part, bad characters)."""


class NotFoundError(ModelStoreError, LookupError):
    """A well-formed reference names a namespace or version the store does not hold."""


class ManifestError(ModelStoreError):
    """A manifest is missing, unreadable or does not validate."""


class ChecksumError(ModelStoreError):
    """One or more files differ from their manifest entry.

    Attributes:
        bad_files: relative paths of the files that are missing or whose size/sha256 differ.
    """

    def __init__(self, message: str, bad_files: list[str]):
        super().__init__(message)
        self.bad_files = bad_files


class VersionExistsError(ModelStoreError):
    """Publishing a version that already exists without ``force``."""


class UnsafeWeightsError(ModelStoreError):
    """A source carries pickle-based weights (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``)."""


class AdapterValidationError(ModelStoreError):
    """A PEFT adapter does not fit its base (unknown target modules, shape mismatch, bad base ref)."""


class SourceError(ModelStoreError):
    """A publish source cannot be read (missing directory, HF repo neither cached nor reachable)."""


class VariantUnavailableError(ModelStoreError):
    """A requested variant is not offered by the manifest and strict mode forbids a fallback."""
