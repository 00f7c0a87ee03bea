"""Image admission: untrusted bytes, base64 or a ``data:`` URL in, a decoded RGB image out, or a ServeError.

Every check that costs nothing runs before the one that costs something: a base64 string's length before it
is decoded (:attr:`~deployments.limits.AdmissionLimits.max_image_bytes`), the format from the magic bytes
before any decoder is chosen, the width and height from the header (``Image.open`` is lazy) before a pixel
is decoded (``max_image_pixels``, ``max_image_side``, ``min_image_side``). Only PNG, JPEG and WebP are
decoded, each by its own Pillow plugin (``Image.open(formats=[...])``), whatever the caller declared; a
declared media type that the bytes contradict is refused. Remote URLs are never fetched.

Decoding is complete and strict: a truncated or corrupt file raises inside ``load()`` (this module relies on
Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` and never sets it) and answers 400, an animated
image 400, an unsupported format 415, anything too large 413. Pillow's own decompression-bomb guard stays in
place behind the pixel limit (``max_image_pixels`` is bounded by it), and its error or warning, should it
ever fire, answers 413 too.

Decoding is CPU work: a server awaits :func:`admit_image_async`, which runs :func:`admit_image` in a worker
thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

from deployments.errors import (InvalidImageError, LimitExceededError, RequestTooLargeError,
                                UnsupportedMediaTypeError)
from deployments.limits import LIMITS, AdmissionLimits, check_image_count

__all__ = ["AdmittedImage", "SUPPORTED_FORMATS", "MEDIA_TYPES", "admit_image", "admit_image_async",
           "image_bytes", "sniff_format", "check_image_count"]

# Pillow format name -> the media types that declare it.
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png",),
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "WEBP": ("image/webp",),
}
SUPPORTED_FORMATS = tuple(MEDIA_TYPES)
_SUPPORTED = "supported formats are PNG, JPEG and WebP"
# Declared types that say nothing (a multipart upload's default): treated as undeclared, the bytes decide.
_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})

# Magic bytes of formats we refuse, only to name them in the 415.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


@dataclass(frozen=True)
class AdmittedImage:
    """A decoded image and what was learnt admitting it.

    Attributes:
        image: the pixels, mode ``RGB``, EXIF orientation applied, alpha composited on white.
        format: ``PNG``, ``JPEG`` or ``WEBP`` (sniffed from the bytes, never taken from the caller).
        width: of ``image``, after the EXIF rotation.
        height: of ``image``, after the EXIF rotation.
        bytes: size of the encoded image.
    """

    image: Image.Image
    format: str
    width: int
    height: int
    bytes: int


def sniff_format(data: bytes) -> str | None:
    """``PNG``, ``JPEG`` or ``WEBP`` from the leading magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _unsupported(data: bytes, field: str) -> UnsupportedMediaTypeError:
    if not data:
        return UnsupportedMediaTypeError(f"{field} is empty (0 bytes); {_SUPPORTED}")
    head = data[:512].lstrip()
    name = next((n for magic, n in _OTHER_MAGIC if data.startswith(magic)), None)
    if name is None and (head.startswith(b"<svg") or head.startswith(b"<?xml") or b"<svg" in head):
        name = "SVG"
    if name is None and len(data) >= 12 and data[4:8] == b"ftyp":
        name = "HEIF/AVIF"
    what = f"is {name}" if name else "is not an image in a supported format (by its magic bytes)"
    return UnsupportedMediaTypeError(f"{field} {what}; {_SUPPORTED}")


def _media_type(declared: str | None) -> str | None:
    declared = (declared or "").split(";")[0].strip().lower()
    return None if not declared or declared in _GENERIC_TYPES else declared


def _check_declared(declared: str | None, fmt: str, field: str) -> None:
    declared = _media_type(declared)
    if declared is not None and declared not in MEDIA_TYPES[fmt]:
        raise InvalidImageError(f"{field} is declared as {declared!r} but its bytes are {fmt} "
                                f"({MEDIA_TYPES[fmt][0]})")


def _check_declared_supported(declared: str | None, field: str) -> None:
    declared = _media_type(declared)
    if declared is not None and declared not in {t for ts in MEDIA_TYPES.values() for t in ts}:
        raise UnsupportedMediaTypeError(f"{field} is declared as {declared!r}; {_SUPPORTED}")


def _check_b64_length(text: str, limits: AdmissionLimits, field: str, slack: int = 0) -> None:
    # Measured before decoding (or copying): 4 base64 characters carry 3 bytes, so a huge string costs nothing.
    if len(text) > 4 * -(-limits.max_image_bytes // 3) + slack:
        raise RequestTooLargeError(f"{field} is about {len(text) * 3 // 4} bytes (base64 of {len(text)} "
                                   f"characters), more than max_image_bytes ({limits.max_image_bytes})")


def _b64decode(text: str, limits: AdmissionLimits, field: str) -> bytes:
    text = text.strip()
    _check_b64_length(text, limits, field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{field} is not valid base64 ({exc}); send raw bytes, base64 or a "
                                f"data:image/...;base64, URL") from None


def image_bytes(source: bytes | bytearray | memoryview | str, limits: AdmissionLimits = LIMITS, *,
                media_type: str | None = None, field: str = "image") -> tuple[bytes, str | None]:
    """The encoded bytes of an image input, and the media type it declares; nothing is decoded yet.

    Args:
        source: raw bytes (a multipart upload), a base64 string, or a ``data:<type>;base64,...`` URL.
        limits: the admission limits.
        media_type: the media type declared beside raw bytes (a multipart part's Content-Type), if any.
        field: how messages name the input (``messages[0].content[1].image_url``).

    Raises:
        InvalidImageError: a URL other than ``data:``, a data URL that is not base64, invalid base64 (400).
        RequestTooLargeError: more than ``max_image_bytes`` (413), measured before base64 is decoded.
        UnsupportedMediaTypeError: a data URL declaring a media type other than PNG, JPEG or WebP (415).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_image_bytes:
            raise RequestTooLargeError(f"{field} is {len(data)} bytes, more than max_image_bytes "
                                       f"({limits.max_image_bytes})")
        _check_declared_supported(media_type, field)
        return data, media_type
    if not isinstance(source, str):
        raise InvalidImageError(f"{field} must be bytes, base64 text or a data: URL, got {type(source).__name__}")
    _check_b64_length(source, limits, field, slack=256)  # room for a data: URL's prefix and whitespace
    head = source[:64].lstrip()
    if head[:5].lower() == "data:":
        match = _DATA_URL.match(source.lstrip()[:256])
        if match is None:
            raise InvalidImageError(f"{field} is a malformed data: URL; expected data:image/png;base64,<data>")
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if "base64" not in params:
            raise InvalidImageError(f"{field} is a data: URL without ';base64'; image data URLs must be base64")
        declared = match["type"].strip() or None
        _check_declared_supported(declared, field)
        return _b64decode(source.lstrip()[match.end():], limits, field), declared
    if _SCHEME.match(head):  # base64 has no ':', so this is a URL of some other scheme
        scheme = head.split(":", 1)[0].lower()
        raise InvalidImageError(f"{field} is a {scheme}: URL; remote image URLs are not fetched: send the image "
                                f"as a data:image/...;base64, URL, base64 or an upload")
    return _b64decode(source, limits, field), media_type


def _open(data: bytes, fmt: str, field: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestTooLargeError(f"{field} has more pixels than Pillow's decompression-bomb limit, and so "
                                   f"more than max_image_pixels: {exc}") from None
    except Image.UnidentifiedImageError:  # its message names the BytesIO object, not the problem
        raise InvalidImageError(f"{field} starts like {fmt} but no valid {fmt} header follows") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error...: the bytes' fault
        raise InvalidImageError(f"{field} is not a readable {fmt} image: {exc}") from None


def _check_header(img: Image.Image, fmt: str, limits: AdmissionLimits, field: str) -> None:
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise RequestTooLargeError(f"{field} is {width}x{height} = {width * height} pixels, more than "
                                   f"max_image_pixels ({limits.max_image_pixels})")
    if max(width, height) > limits.max_image_side:
        raise RequestTooLargeError(f"{field} is {width}x{height}, a side longer than max_image_side "
                                   f"({limits.max_image_side})")
    if min(width, height) < limits.min_image_side:
        raise LimitExceededError(f"{field} is {width}x{height}, a side shorter than min_image_side "
                                 f"({limits.min_image_side})")
    # An MPO is a JPEG with auxiliary pictures (phones add depth maps): its first frame is the photo.
    if img.format != "MPO" and (getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1):
        raise InvalidImageError(f"{field} is an animated {fmt} of {getattr(img, 'n_frames', '?')} frames; "
                                f"animated images are not supported")


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit grey: scale to 8 bits, not clip
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def admit_image(source: bytes | bytearray | memoryview | str, limits: AdmissionLimits = LIMITS, *,
                media_type: str | None = None, field: str = "image") -> AdmittedImage:
    """Admit one untrusted image: check it, decode it fully, return it as RGB.

    Args:
        source: raw bytes (a multipart upload), a base64 string, or a ``data:<type>;base64,...`` URL.
        limits: the admission limits.
        media_type: the media type declared beside raw bytes (a multipart part's Content-Type), if any.
        field: how messages name the input.

    Raises:
        InvalidImageError: a remote URL, bad base64, a media type the bytes contradict, an animated,
            truncated or corrupt image (400).
        LimitExceededError: a side shorter than ``min_image_side`` (400).
        RequestTooLargeError: more than ``max_image_bytes``, ``max_image_pixels`` or ``max_image_side`` (413).
        UnsupportedMediaTypeError: not PNG, JPEG or WebP, by its bytes or by its declared type (415).
    """
    data, declared = image_bytes(source, limits, media_type=media_type, field=field)
    if len(data) > limits.max_image_bytes:
        raise RequestTooLargeError(f"{field} is {len(data)} bytes, more than max_image_bytes "
                                   f"({limits.max_image_bytes})")
    fmt = sniff_format(data)
    if fmt is None:
        raise _unsupported(data, field)
    _check_declared(declared, fmt, field)
    img = _open(data, fmt, field)
    try:
        _check_header(img, fmt, limits, field)
        try:
            img.load()
            rgb = _to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestTooLargeError(f"{field} exceeds Pillow's decompression-bomb limit: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fuzzed EXIF block raises struct.error from exif_transpose
            raise InvalidImageError(f"{field} is a truncated or corrupt {fmt} image: {exc}") from None
    finally:
        img.close()
    return AdmittedImage(rgb, fmt, rgb.width, rgb.height, len(data))


async def admit_image_async(source: bytes | bytearray | memoryview | str, limits: AdmissionLimits = LIMITS, *,
                            media_type: str | None = None, field: str = "image") -> AdmittedImage:
    """:func:`admit_image` in a worker thread, so decoding never blocks the event loop."""
    return await asyncio.to_thread(admit_image, source, limits, media_type=media_type, field=field)
