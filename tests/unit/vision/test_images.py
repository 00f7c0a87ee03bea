"""Image admission (deployments/vision/images.py): every bad image is a ServeError with the right status and a
message naming the limit or rule; every image is built in memory with Pillow, a few dozen pixels at most."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import struct
import threading
import warnings
import zlib

import pytest
from PIL import Image, ImageFile

from deployments.errors import (InvalidImageError, LimitExceededError, RequestTooLargeError, ServeError,
                                UnsupportedMediaTypeError, error_body, to_serve_error)
from deployments.limits import LIMITS, AdmissionLimits, check_image_count
from deployments.vision import images
from deployments.vision.images import admit_image, admit_image_async, sniff_format

pytestmark = pytest.mark.timeout(30)  # a hang is a failure too


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size=(24, 24), mode="RGB", seed=0) -> Image.Image:
    rng = random.Random(seed)
    bands = len(mode)
    return Image.frombytes(mode, size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * bands)))


def png_declaring(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR is patched to declare ``width`` x ``height`` (CRC recomputed)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), "red"), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


PNG = encode(noise(), "PNG")
JPEG = encode(noise(), "JPEG", quality=90)
WEBP = encode(noise(), "WEBP")


def refused(source, cls: type[ServeError], status: int, *needles: str, **kw) -> ServeError:
    with pytest.raises(cls) as info:
        admit_image(source, **kw)
    err = info.value
    assert err.status_code == status
    assert error_body(err)["error"]["status"] == status
    for needle in needles:
        assert needle in str(err), (needle, str(err))
    return err


# -- what is admitted --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, fmt", [
    (PNG, "PNG"), (JPEG, "JPEG"), (WEBP, "WEBP"),
    (base64.b64encode(PNG).decode(), "PNG"),
    (data_url(PNG), "PNG"), (data_url(JPEG, "image/jpeg"), "JPEG"), (data_url(WEBP, "image/webp"), "WEBP"),
    (data_url(JPEG, "IMAGE/JPG"), "JPEG"),  # media types are case-insensitive; image/jpg is a common alias
    ("  " + data_url(PNG) + "\n", "PNG"),
    (bytearray(PNG), "PNG"), (memoryview(JPEG), "JPEG"),
])
def test_png_jpeg_webp_are_admitted_as_rgb(source, fmt):
    admitted = admit_image(source)
    assert admitted.format == fmt
    assert admitted.image.mode == "RGB"
    assert (admitted.width, admitted.height) == admitted.image.size == (24, 24)
    assert admitted.bytes == len({"PNG": PNG, "JPEG": JPEG, "WEBP": WEBP}[fmt])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # admission never loosens Pillow's strictness


def test_png_pixels_survive_exactly():
    img = noise((16, 12))
    assert admit_image(encode(img, "PNG")).image.tobytes() == img.tobytes()


@pytest.mark.parametrize("img", [
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)),
    Image.new("LA", (10, 10), (0, 0)),
    Image.new("RGBA", (10, 10), (0, 0, 255, 0)).convert("P", palette=Image.Palette.ADAPTIVE),
], ids=["RGBA", "LA", "P+transparency"])
def test_transparency_is_composited_on_white(img):
    if img.mode == "P":
        img.info["transparency"] = img.getpixel((0, 0))
    assert admit_image(encode(img, "PNG")).image.getpixel((5, 5)) == (255, 255, 255)


def test_half_transparent_red_on_white_is_pink():
    r, g, b = admit_image(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG")).image.getpixel((0, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)), ("I;16", 40000, (156, 156, 156)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
])
def test_other_modes_become_rgb(mode, value, expected):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixel = admit_image(encode(Image.new(mode, (8, 8), value), fmt)).image.getpixel((4, 4))
    assert all(abs(a - b) <= 3 for a, b in zip(pixel, expected)), pixel


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (16, 8), "white")
    img.paste((255, 0, 0), (0, 0, 4, 8))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    admitted = admit_image(encode(img, "JPEG", exif=exif, quality=95))
    assert (admitted.width, admitted.height) == (8, 16)
    assert admitted.image.getpixel((4, 1))[1] < 80  # the stripe is now on top
    assert admitted.image.getpixel((4, 14))[1] > 200


def test_an_mpo_jpeg_is_its_first_picture():
    """Phones write MPO (a JPEG with auxiliary pictures); its frames are not an animation."""
    first, second = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    data = encode(first, "MPO", save_all=True, append_images=[second])
    admitted = admit_image(data, media_type="image/jpeg")
    assert admitted.format == "JPEG"
    assert admitted.image.getpixel((8, 8))[0] > 200


# -- what is refused, and why ------------------------------------------------------------------------------


@pytest.mark.parametrize("source, name", [
    (encode(noise(), "GIF"), "is GIF"),
    (encode(noise(), "BMP"), "is BMP"),
    (encode(noise(), "TIFF"), "is TIFF"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "is SVG"),
    (b"<svg width='10' height='10'></svg>", "is SVG"),
    (b"hello, this is text and not an image", "not an image in a supported format"),
    (b"", "is empty (0 bytes)"),
    (b"%PDF-1.7\n", "is PDF"),
], ids=["gif", "bmp", "tiff", "svg-xml", "svg", "text", "empty", "pdf"])
def test_other_formats_are_415_naming_the_supported_ones(source, name):
    refused(source, UnsupportedMediaTypeError, 415, name, "PNG, JPEG and WebP")
    refused(base64.b64encode(source).decode(), UnsupportedMediaTypeError, 415, "PNG, JPEG and WebP")


@pytest.mark.parametrize("declared", ["image/gif", "text/plain", "image/svg+xml"])
def test_a_declared_unsupported_type_is_415(declared):
    refused(data_url(PNG, declared), UnsupportedMediaTypeError, 415, repr(declared), "PNG, JPEG and WebP")
    refused(PNG, UnsupportedMediaTypeError, 415, repr(declared), media_type=declared)


@pytest.mark.parametrize("data, declared, actual", [
    (PNG, "image/jpeg", "PNG"), (JPEG, "image/png", "JPEG"), (WEBP, "image/png", "WEBP"), (PNG, "image/webp", "PNG"),
])
def test_a_declared_type_the_bytes_contradict_is_400(data, declared, actual):
    refused(data_url(data, declared), InvalidImageError, 400, f"declared as {declared!r}", f"bytes are {actual}")
    refused(data, InvalidImageError, 400, f"declared as {declared!r}", media_type=declared)


@pytest.mark.parametrize("url", [
    "http://example.com/cat.png", "https://example.com/cat.png", "HTTPS://EXAMPLE.COM/x.jpg",
    "file:///etc/passwd", "ftp://example.com/a.png", "s3://bucket/key.png", " https://example.com/x.png",
])
def test_remote_urls_are_never_fetched(url, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    refused(url, InvalidImageError, 400, "remote image URLs are not fetched")


@pytest.mark.parametrize("text", ["not base64 at all!", "iVBORw0KGgo", "ab=cd", "aGVsbG8\nd29ybGQ="])
def test_text_that_is_not_base64_is_400(text):
    refused(text, InvalidImageError, 400, "not valid base64")


def test_a_data_url_must_be_base64():
    refused("data:image/png,%89PNG%0D%0A", InvalidImageError, 400, "without ';base64'")
    refused("data:image/png;base64", InvalidImageError, 400, "malformed data: URL")


def test_a_data_url_without_media_type_is_sniffed():
    assert admit_image(f"data:;base64,{base64.b64encode(PNG).decode()}").format == "PNG"


@pytest.mark.parametrize("generic", ["application/octet-stream", "Application/Octet-Stream; name=x", "", None])
def test_a_generic_declared_type_lets_the_bytes_decide(generic):
    """A multipart part without a specific Content-Type says octet-stream; that contradicts nothing."""
    assert admit_image(JPEG, media_type=generic).format == "JPEG"
    assert admit_image(data_url(WEBP, generic or "")).format == "WEBP"


def test_a_corrupt_exif_block_is_400_not_500():
    """Found by fuzzing: one byte of the EXIF header changed makes exif_transpose raise struct.error."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 6, "desc"
    data = bytearray(encode(noise(), "JPEG", exif=exif))
    data[41] = 69
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refused(bytes(data), InvalidImageError, 400, "corrupt JPEG")


@pytest.mark.filterwarnings("ignore")
def test_fuzzed_images_are_admitted_or_refused_never_crash():
    """Seeded byte flips and cuts of each format: every outcome is an image or a 4xx ServeError."""
    rng = random.Random(0)
    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 6, "desc"
    seeds = [PNG, JPEG, WEBP, encode(noise(), "JPEG", exif=exif, progressive=True),
             encode(noise().convert("P"), "PNG"), encode(noise(), "WEBP", lossless=True, exif=exif)]
    outcomes = set()
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        try:
            admit_image(bytes(data))
            outcomes.add(200)
        except ServeError as exc:
            assert 400 <= exc.status_code < 500, exc
            outcomes.add(exc.status_code)
    assert {200, 400, 415} <= outcomes


def test_other_python_types_are_400():
    refused(12345, InvalidImageError, 400, "got int")


def test_more_than_max_image_bytes_is_413():
    limits = AdmissionLimits(max_image_bytes=len(PNG) - 1)
    refused(PNG, RequestTooLargeError, 413, f"{len(PNG)} bytes", f"max_image_bytes ({len(PNG) - 1})", limits=limits)
    refused(data_url(PNG), RequestTooLargeError, 413, "max_image_bytes", limits=limits)
    assert admit_image(PNG, AdmissionLimits(max_image_bytes=len(PNG))).bytes == len(PNG)
    # The default: 8 MiB
    refused(b"\x89PNG\r\n\x1a\n" + bytes(LIMITS.max_image_bytes), RequestTooLargeError, 413,
            f"max_image_bytes ({8 * 1024 * 1024})")


def test_base64_length_is_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    huge = "!" * (4 * LIMITS.max_image_bytes // 3 + 1024)  # not even base64: the length alone refuses it
    refused(huge, RequestTooLargeError, 413, "max_image_bytes")
    refused("data:image/png;base64," + huge, RequestTooLargeError, 413, "max_image_bytes")


def test_pixels_are_checked_from_the_header_before_decoding(monkeypatch):
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    refused(png_declaring(5000, 5000), RequestTooLargeError, 413, "5000x5000 = 25000000 pixels",
            f"max_image_pixels ({4096 * 4096})")
    refused(png_declaring(9000, 10), RequestTooLargeError, 413, "9000x10", "max_image_side (8192)")
    refused(png_declaring(10, 9000), RequestTooLargeError, 413, "max_image_side (8192)")
    small = AdmissionLimits(max_image_pixels=100, max_image_side=50)
    refused(PNG, RequestTooLargeError, 413, "24x24 = 576 pixels", "max_image_pixels (100)", limits=small)


def test_a_decompression_bomb_is_413_never_500():
    """20000 x 20000 is over twice Pillow's own limit: Image.open raises DecompressionBombError itself."""
    err = refused(png_declaring(20000, 20000), RequestTooLargeError, 413, "max_image_pixels")
    assert "decompression" in str(err).lower()


def test_pillows_bomb_warning_is_413_even_as_an_error():
    """10000 x 10000 lies between Pillow's warning and its error; a process run with -W error turns the
    warning into an exception at open, which is a 413 as well."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        refused(png_declaring(10000, 10000), RequestTooLargeError, 413, "max_image_pixels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        refused(png_declaring(10000, 10000), RequestTooLargeError, 413, "10000x10000", "max_image_pixels")


def test_the_pixel_limit_cannot_exceed_pillows_bomb_limit():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AdmissionLimits(max_image_pixels=Image.MAX_IMAGE_PIXELS + 1)
    with pytest.raises(ValidationError, match=r"min_image_side \(100\) must be <= max_image_side \(50\)"):
        AdmissionLimits(min_image_side=100, max_image_side=50)


@pytest.mark.parametrize("size", [(4, 4), (100, 7), (7, 100)])
def test_smaller_than_min_image_side_is_400(size):
    err = refused(encode(Image.new("RGB", size), "PNG"), LimitExceededError, 400, f"{size[0]}x{size[1]}",
                  "min_image_side (8)")
    assert err.error_type == "limit_exceeded"


def test_animated_png_is_400():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert b"acTL" in data  # really an APNG
    refused(data, InvalidImageError, 400, "animated PNG of 3 frames", "animated images are not supported")


def test_animated_webp_is_400():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green")]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    refused(data, InvalidImageError, 400, "animated images are not supported")


def _truncated() -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    big = noise((32, 32))
    jpeg, png, webp = encode(big, "JPEG", quality=90), encode(big, "PNG"), encode(big, "WEBP")
    sos, idat = jpeg.index(b"\xff\xda"), png.index(b"IDAT")
    junk = lambda n: bytes(rng.randrange(256) for _ in range(n))  # noqa: E731
    return [
        ("jpeg cut in half", jpeg[:len(jpeg) // 2]),
        ("jpeg garbage after the header", jpeg[:sos + 14] + junk(len(jpeg) - sos - 14)),
        ("jpeg only its magic", b"\xff\xd8\xff"),
        ("png cut in half", png[:len(png) // 2]),
        ("png garbage in IDAT", png[:idat + 4] + junk(len(png) - idat - 4)),
        ("png header only", png[:idat - 4]),
        ("png only its magic", b"\x89PNG\r\n\x1a\n"),
        ("webp cut in half", webp[:len(webp) // 2]),
        ("webp garbage after the header", webp[:30] + junk(len(webp) - 30)),
        ("webp riff header only", b"RIFF\x00\x00\x00\x00WEBP"),
    ]


@pytest.mark.parametrize("name, data", _truncated(), ids=[n for n, _ in _truncated()])
def test_truncated_or_corrupt_images_are_400(name, data):
    err = refused(data, InvalidImageError, 400, "image")
    assert "BytesIO" not in str(err)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_messages_name_the_field():
    refused(b"GIF89a", UnsupportedMediaTypeError, 415, "messages[0].content[2] is GIF",
            field="messages[0].content[2]")


def test_image_count():
    check_image_count(0)
    check_image_count(LIMITS.max_images_per_request)
    with pytest.raises(RequestTooLargeError, match=r"5 images, more than max_images_per_request \(4\)") as info:
        check_image_count(5)
    assert info.value.status_code == 413
    with pytest.raises(RequestTooLargeError):
        check_image_count(2, AdmissionLimits(max_images_per_request=1))


@pytest.mark.parametrize("cls, status, error_type", [
    (InvalidImageError, 400, "invalid_image"),
    (UnsupportedMediaTypeError, 415, "unsupported_media_type"),
])
def test_the_new_error_classes(cls, status, error_type):
    err = cls("x")
    assert to_serve_error(err) is err
    assert error_body(err) == {"error": {"type": error_type, "message": "x", "status": status}}
    assert isinstance(err, ValueError)


def test_sniffing_reads_only_magic_bytes():
    assert [sniff_format(d) for d in (PNG, JPEG, WEBP, b"RIFF\0\0\0\0WAVE", b"")] == ["PNG", "JPEG", "WEBP", None, None]


def test_the_async_wrapper_decodes_off_the_event_loop(monkeypatch):
    threads = []
    real = images.admit_image

    def spy(*args, **kw):
        threads.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(images, "admit_image", spy)

    async def main():
        loop_thread = threading.get_ident()
        admitted = await admit_image_async(data_url(PNG))
        with pytest.raises(UnsupportedMediaTypeError):
            await admit_image_async(b"GIF89a")
        return loop_thread, admitted

    loop_thread, admitted = asyncio.run(main())
    assert admitted.format == "PNG" and len(threads) == 2 and loop_thread not in threads
