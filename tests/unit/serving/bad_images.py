"""Good and bad images for the serving tests, built in memory with Pillow: the cases every image route must
answer with a 4xx JSON error (status and type) before any model is called."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

from PIL import Image

from deployments.limits import LIMITS


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


def noise(size=(24, 24), seed=0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


def png_declaring(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header is patched to declare ``width`` x ``height``: a bomb that costs nothing."""
    data = bytearray(encode(Image.new("RGB", (8, 8), "red")))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def animated_png() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


PNG = encode(noise())
GOOD = data_url(PNG)

# (id, image as the API takes it, HTTP status, error type, a fragment of the message)
BAD_IMAGES = [
    ("not_an_image", b64(b"just some text, certainly not a picture"), 415, "unsupported_media_type",
     "not an image in a supported format"),
    ("gif", data_url(encode(Image.new("RGB", (16, 16)), "GIF"), "image/gif"), 415, "unsupported_media_type",
     "supported formats are PNG, JPEG and WebP"),
    ("truncated", b64(PNG[: len(PNG) // 2]), 400, "invalid_image", "truncated or corrupt"),
    ("corrupt_header", b64(b"\x89PNG\r\n\x1a\n" + bytes(64)), 400, "invalid_image", "no valid PNG header"),
    ("bomb", b64(png_declaring(50_000, 50_000)), 413, "request_too_large", "max_image_pixels"),
    ("over_bytes", "A" * (4 * -(-LIMITS.max_image_bytes // 3) + 1024), 413, "request_too_large", "max_image_bytes"),
    ("animated", b64(animated_png()), 400, "invalid_image", "animated"),
    ("remote_url", "https://example.com/chart.png", 400, "invalid_image", "remote image URLs are not fetched"),
    ("too_small", b64(encode(Image.new("RGB", (4, 4)))), 400, "limit_exceeded", "min_image_side"),
    ("declared_otherwise", data_url(PNG, "image/jpeg"), 400, "invalid_image", "declared as 'image/jpeg'"),
]
