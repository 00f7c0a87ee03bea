"""Where a publish reads its files from: a local directory or a pinned Hugging Face snapshot.

Sources sit behind one small abstract base and are chosen by name from :data:`SOURCES`; an unknown
name is refused with the list of choices. A source only *materialises* a directory to copy from; the
store does the copying, checksumming and atomic rename.
"""

from __future__ import annotations

import os
from fnmatch import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError, UnsafeWeightsError
from .fsutil import iter_files
from .manifest import Source

__all__ = ["PICKLE_SUFFIXES", "Materialised", "ModelSource", "LocalDirSource", "HuggingFaceSource",
           "SOURCES", "make_source", "refuse_pickles"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class Materialised:
    """A readable directory plus the provenance to record in the manifest."""

    directory: Path
    source: Source
    include: list[str] | None = None  # relative paths to publish; None = everything


class ModelSource(ABC):
    """A place model files come from."""

    name: str

    @abstractmethod
    def materialise(self) -> Materialised:
        """Return a local directory holding the files, downloading or resolving as needed."""


class LocalDirSource(ModelSource):
    """Files already on local disk (an export from training, a copied snapshot)."""

    name = "local"

    def __init__(self, path: str | os.PathLike, source_type: str = "local", generator: str | None = None):
        self.path = Path(path)
        self.source_type = source_type
        self.generator = generator

    def materialise(self) -> Materialised:
        if not self.path.is_dir():
            raise SourceError(f"source directory {str(self.path)!r} does not exist or is not a directory")
        return Materialised(
            self.path,
            Source(type=self.source_type, path=str(self.path.resolve()), generator=self.generator),
        )


class HuggingFaceSource(ModelSource):
    """A Hugging Face repo at a pinned revision, from the local HF cache or the network.

    Only safetensors weights, JSON configs and tokenizer files are fetched; ``consolidated.*`` (Mistral's
    native-format duplicate of the weights) is skipped so the store does not hold the model twice.
    """

    name = "huggingface"
    ALLOW = ["*.safetensors", "*.json", "tokenizer.model", "*.jinja", "*.txt", "*.tiktoken"]
    IGNORE = ["consolidated.*", "original/*"]

    def __init__(self, repo_id: str, revision: str = "main", token: str | None = None,
                 cache_dir: str | os.PathLike | None = None):
        if not repo_id or repo_id.count("/") > 1 or ".." in repo_id or repo_id.startswith("/"):
            raise SourceError(f"invalid Hugging Face repo id {repo_id!r}: expected 'org/name'")
        self.repo_id = repo_id
        self.revision = revision
        self.token = token or os.environ.get("HF_TOKEN")
        self.cache_dir = cache_dir

    def materialise(self) -> Materialised:
        from huggingface_hub import snapshot_download

        kwargs = dict(repo_id=self.repo_id, revision=self.revision, allow_patterns=self.ALLOW,
                      ignore_patterns=self.IGNORE, token=self.token,
                      # read at call time: huggingface_hub freezes HF_HUB_CACHE when first imported
                      cache_dir=self.cache_dir or os.environ.get("HF_HUB_CACHE"))
        errors: list[str] = []
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        attempts = [True] if offline else [False, True]
        for local_only in attempts:
            try:
                path = Path(snapshot_download(local_files_only=local_only, **kwargs))
                break
            except Exception as exc:  # network, auth, cache miss: all reported together below
                errors.append(f"{'cache' if local_only else 'network'}: {type(exc).__name__}: {exc}")
        else:
            raise SourceError(
                f"Hugging Face repo {self.repo_id!r} at revision {self.revision!r} is neither in the local "
                f"cache nor downloadable ({'; '.join(errors)})"
            )
        # snapshot_download returns .../snapshots/<commit sha>: that is the resolved, pinned revision.
        commit = path.name
        # A cached snapshot may hold more than this source asked for (another caller's download).
        include = [p.as_posix() for p in iter_files(path)
                   if any(fnmatch(p.as_posix(), pat) for pat in self.ALLOW)
                   and not any(fnmatch(p.as_posix(), pat) for pat in self.IGNORE)]
        if not any(p.endswith(".safetensors") for p in include):
            raise UnsafeWeightsError(
                f"{self.repo_id}@{commit} has no .safetensors weights; pickle weights are refused "
                "(convert with save_pretrained(..., safe_serialization=True) and publish the directory)"
            )
        return Materialised(path, Source(type="huggingface", repo_id=self.repo_id, revision=commit), include)


SOURCES: dict[str, type[ModelSource]] = {"local": LocalDirSource, "huggingface": HuggingFaceSource}


def make_source(kind: str, *args, **kwargs) -> ModelSource:
    """Build a source by name, refusing unknown names with the list of choices."""
    try:
        cls = SOURCES[kind]
    except KeyError:
        raise SourceError(f"unknown source {kind!r}; choose one of {sorted(SOURCES)}") from None
    return cls(*args, **kwargs)


def refuse_pickles(files: list[Path]) -> None:
    """Raise :class:`UnsafeWeightsError` naming every pickle-format file among ``files``."""
    bad = [f.as_posix() for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise UnsafeWeightsError(
            f"pickle weight files are refused: {', '.join(bad)}; convert them to safetensors "
            "(save_pretrained(..., safe_serialization=True)) and publish again"
        )
