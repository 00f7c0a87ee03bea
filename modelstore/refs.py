"""Typed, validated model references.

A reference arrives once as a string (CLI, config, HTTP header) and becomes a frozen ref; only refs the
store knows ever become filesystem paths. Forms::

    base_models@v20251123-mistral-v0.3      the text base namespace, a pinned version
    base_models@current                     whatever ``current`` points at
    base_models/llava_tiny@v1-tiny-llava    a named base (a second base model, e.g. vision-language)
    base_models/llava_tiny                  same as ``@current``
    synthesizer/mistral_synth_v1@v1         an agent's adapter, pinned
    synthesizer/mistral_synth_v1            same as ``@current``

A named base's name is an identifier like an agent's, except ``versions`` and ``current``: those are
the text base's own entries in ``<root>/base_models/``, beside which every named base lives.

Anything else -- ``..``, absolute paths, empty parts, path separators inside a part, whitespace -- is
refused with a :class:`~modelstore.errors.RefError` that quotes the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from .errors import RefError

__all__ = ["BASE_NAMESPACE", "CURRENT", "RESERVED_BASE_NAMES", "BaseRef", "AdapterRef", "ModelRef", "is_base_namespace",
           "parse_ref", "validate_version"]

BASE_NAMESPACE = "base_models"
CURRENT = "current"
# A named base lives in <root>/base_models/<name>/, beside the text base's versions/ and current.
RESERVED_BASE_NAMES = frozenset({"versions", CURRENT})

# Names are identifiers so they are safe as directory names on every filesystem we care about.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Versions may carry dots and dashes (v20251123-mistral-v0.3) but must start alphanumerically, so
# ".", ".." and hidden names can never be expressed.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(raw: str, part: str, what: str) -> str:
    if not part:
        raise RefError(f"invalid model ref {raw!r}: empty {what}")
    if not _NAME_RE.match(part):
        raise RefError(
            f"invalid model ref {raw!r}: {what} {part!r} must match {_NAME_RE.pattern} "
            "(lower-case letters, digits, underscores; starts with a letter)"
        )
    return part


def _check_base_name(raw: str, name: str) -> str:
    _check_name(raw, name, "base name")
    if name in RESERVED_BASE_NAMES:
        raise RefError(f"invalid model ref {raw!r}: base name {name!r} is reserved "
                       f"({', '.join(sorted(RESERVED_BASE_NAMES))} are the text base's own entries)")
    return name


def validate_version(version: str, raw: str | None = None) -> str:
    """Return ``version`` if it is a legal version tag, else raise :class:`RefError`."""
    shown = raw if raw is not None else version
    if not version:
        raise RefError(f"invalid model ref {shown!r}: empty version")
    if not _VERSION_RE.match(version) or ".." in version:
        raise RefError(
            f"invalid version {version!r} in {shown!r}: must match {_VERSION_RE.pattern} and not contain '..'"
        )
    return version


@dataclass(frozen=True, slots=True)
class BaseRef:
    """A version of a base model namespace: the text base (``name`` None) or a named base."""

    version: str = CURRENT
    name: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:  # a name becomes a directory: refuse what parse_ref would refuse
            _check_base_name(f"{BASE_NAMESPACE}/{self.name}@{self.version}", self.name)

    @property
    def namespace(self) -> str:
        return BASE_NAMESPACE if self.name is None else f"{BASE_NAMESPACE}/{self.name}"

    @property
    def kind(self) -> str:
        return "base"

    def with_version(self, version: str) -> "BaseRef":
        return BaseRef(validate_version(version), self.name)

    def __str__(self) -> str:
        return f"{self.namespace}@{self.version}"


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A version of one agent's named adapter."""

    agent: str
    name: str
    version: str = CURRENT

    @property
    def namespace(self) -> str:
        return f"{self.agent}/{self.name}"

    @property
    def kind(self) -> str:
        return "adapter"

    def with_version(self, version: str) -> "AdapterRef":
        return AdapterRef(self.agent, self.name, validate_version(version))

    def __str__(self) -> str:
        return f"{self.agent}/{self.name}@{self.version}"


ModelRef = Union[BaseRef, AdapterRef]


def parse_ref(raw: object) -> ModelRef:
    """Parse a reference string into a :class:`BaseRef` or :class:`AdapterRef`.

    Args:
        raw: the user-supplied string.

    Returns:
        The typed ref. A missing ``@version`` means ``@current``.

    Raises:
        RefError: the string is not a valid reference; the message quotes it and says why.
    """
    if isinstance(raw, (BaseRef, AdapterRef)):
        return raw
    if not isinstance(raw, str):
        raise RefError(f"invalid model ref {raw!r}: expected a string")
    if raw != raw.strip() or not raw:
        raise RefError(f"invalid model ref {raw!r}: empty or surrounded by whitespace")
    if raw.startswith("/") or "\\" in raw or raw.startswith("~"):
        raise RefError(f"invalid model ref {raw!r}: filesystem paths are not refs")
    if raw.count("@") > 1:
        raise RefError(f"invalid model ref {raw!r}: more than one '@'")
    body, sep, version = raw.partition("@")
    if sep:
        validate_version(version, raw)
    else:
        version = CURRENT
    parts = body.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise RefError(f"invalid model ref {raw!r}: empty, '.' or '..' path part")
    if len(parts) == 1:
        if parts[0] != BASE_NAMESPACE:
            raise RefError(
                f"invalid model ref {raw!r}: a one-part ref must be {BASE_NAMESPACE!r}; "
                "adapters are '<agent>/<adapter>[@version]'"
            )
        return BaseRef(version)
    if len(parts) == 2:
        if parts[0] == BASE_NAMESPACE:
            return BaseRef(version, _check_base_name(raw, parts[1]))
        agent = _check_name(raw, parts[0], "agent")
        name = _check_name(raw, parts[1], "adapter name")
        return AdapterRef(agent, name, version)
    raise RefError(f"invalid model ref {raw!r}: expected 'base_models[/<base>]@<version>' or "
                   "'<agent>/<adapter>@<version>'")


def is_base_namespace(namespace: str) -> bool:
    """Whether ``namespace`` (no ``@version``) names a base: ``base_models`` or ``base_models/<name>``."""
    if "@" in namespace:
        return False
    try:
        return isinstance(parse_ref(namespace), BaseRef)
    except RefError:
        return False
