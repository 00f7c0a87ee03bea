"""The newsreader's synthetic visual task: small news images rendered locally, each with a headline to read.

Every image is one of four kinds (a bar or line chart, a "photo" of smooth colour and blobs, a page of
text, a map of coloured regions with roads and a river) with one headline word printed large in a band
along the top. The model answers with the JSON contract :class:`VisionTarget`::

    {"image_kind": "map", "headline": "flood", "caption": "a map about flood", "confidence": 0.82}

``caption`` follows from the kind and the word (:func:`caption_for`); ``confidence`` is how legibly the
headline is printed, the contrast of its ink against the band (1.0: full contrast), so it too is read
from the pixels. Everything is drawn with Pillow and its embedded font (``ImageFont.load_default(size=)``,
no font files) from a seeded ``random.Random``: the same seed gives the same PNG bytes.

A dataset is a folder of PNG files and a JSONL file of ``{"image", "text", "target"}`` lines, ``image``
relative to the folder; :func:`load_vision_jsonl` checks every line (and admits every image through
``deployments.vision``, as serving would) and names the file and line of the first problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_graph.contracts import format_validation_error
from deployments.errors import ServeError
from deployments.limits import LIMITS, AdmissionLimits
from deployments.vision import admit_image

from .data import json_record, jsonl_lines
from .errors import DataError

__all__ = ["KINDS", "WORDS", "KIND_PHRASES", "INSTRUCTION", "DEFAULT_SIZE", "VisionTarget", "VisionRecord",
           "caption_for", "headline_font", "render_example", "make_example", "generate_dataset", "write_splits",
           "load_vision_jsonl"]

Kind = Literal["chart", "photo", "text_page", "map"]
Word = Literal["flood", "vote", "strike", "budget", "storm", "match", "court", "fire"]
KINDS: tuple[str, ...] = Kind.__args__
WORDS: tuple[str, ...] = Word.__args__
KIND_PHRASES = {"chart": "a chart", "photo": "a photo", "text_page": "a page of text", "map": "a map"}
INSTRUCTION = ("Read this news image. Answer in JSON: image_kind (chart, photo, text_page or map), headline "
               "(the large word at the top), caption, and confidence (how legible the headline is, 0 to 1).")
DEFAULT_SIZE = 64  # the tiny model's image size
BAND = 0.34  # the headline band's share of the height
CLARITY = (0.35, 1.0)  # range of the headline's contrast, and so of the target's confidence
_RECORD_FIELDS = ("image", "text", "target")


def caption_for(kind: str, word: str) -> str:
    """The caption of an image: ``"<kind phrase> about <word>"`` (``"a page of text about vote"``)."""
    return f"{KIND_PHRASES[kind]} about {word}"


class VisionTarget(BaseModel):
    """What the model answers for one image, keys in this order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_kind: Kind = Field(description="What the image shows.")
    headline: Word = Field(description="The word printed large in the band at the top.")
    caption: str = Field(description="caption_for(image_kind, headline).")
    confidence: float = Field(ge=0.0, le=1.0, description="How legible the headline is: its contrast, 0..1.")

    @model_validator(mode="after")
    def _caption_matches(self) -> "VisionTarget":
        expected = caption_for(self.image_kind, self.headline)
        if self.caption != expected:
            raise ValueError(f"caption {self.caption!r} must be {expected!r} for this kind and headline")
        return self


@dataclass(frozen=True)
class VisionRecord:
    """One checked line of a vision JSONL: the image (admitted once at load), instruction and target."""

    image: Path
    text: str
    target: VisionTarget
    width: int
    height: int
    source: str
    line: int

    def load_image(self, limits: AdmissionLimits = LIMITS) -> Image.Image:
        """The image as the server would see it: admitted and RGB."""
        return admit_image(self.image.read_bytes(), limits).image


# -- rendering ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _font(px: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=px)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType falls back to a fixed 11 px font
        raise RuntimeError("Pillow has no FreeType support: the headline font cannot be scaled")
    return font


@lru_cache(maxsize=None)
def headline_font(word: str, width: int, height: int) -> ImageFont.FreeTypeFont:
    """The largest embedded-font size at which ``word``, drawn bold (stroke 1), fits ``width`` x ``height``.

    Raises:
        ValueError: not even a 6 px font fits (the image is too small for a headline).
    """
    best = None
    for px in range(6, 4 * height):
        left, top, right, bottom = _font(px).getbbox(word, stroke_width=1)
        if right - left > width or bottom - top > height:
            break
        best = _font(px)
    if best is None:
        raise ValueError(f"a {width}x{height} band is too small for the headline {word!r}")
    return best


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def _colour(rng: random.Random, lo: int = 40, hi: int = 220) -> tuple[int, int, int]:
    return rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)


def _chart(img: Image.Image, rng: random.Random, s: float) -> None:
    draw, (w, h) = ImageDraw.Draw(img), img.size
    x0, y0, x1, y1 = round(5 * s), round(3 * s), w - round(3 * s), h - round(4 * s)
    for gy in range(y1 - round(8 * s), y0, -round(8 * s)):  # light grid
        draw.line([(x0, gy), (x1, gy)], fill=(225, 225, 225))
    if rng.random() < 0.5:
        n = rng.randint(3, 6)
        step = (x1 - x0) / n
        for i in range(n):
            top = rng.randint(y0 + 1, y1 - 2)
            left = round(x0 + i * step + step * 0.2)
            draw.rectangle([left, top, max(left + 1, round(x0 + (i + 1) * step - step * 0.2)), y1], fill=_colour(rng))
    else:
        points = [(round(x0 + (x1 - x0) * i / 6), rng.randint(y0 + 1, y1 - 2)) for i in range(7)]
        draw.line(points, fill=_colour(rng, 0, 180), width=max(1, round(s)))
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=max(1, round(s)))  # axes
    for tx in range(x0, x1, round(8 * s)):
        draw.line([(tx, y1), (tx, y1 + round(2 * s))], fill=(0, 0, 0))


def _photo(img: Image.Image, rng: random.Random, s: float) -> None:
    w, h = img.size
    top, bottom = _colour(rng, 30, 230), _colour(rng, 30, 230)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        draw.line([(0, y), (w, y)], fill=_mix(top, bottom, y / max(1, h - 1)))
    for _ in range(rng.randint(3, 6)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 14) * s
        draw.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.4), cx + r, cy + r], fill=_colour(rng, 20, 240))
    img.paste(img.filter(ImageFilter.GaussianBlur(3 * s)))
    grain = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")
    img.paste(Image.blend(img, grain, 0.12))


def _text_page(img: Image.Image, rng: random.Random, s: float) -> None:
    draw, (w, h) = ImageDraw.Draw(img), img.size
    margin, pitch = round(3 * s), max(3, round(3 * s))
    columns = [(margin, w - margin)] if rng.random() < 0.6 else [(margin, w // 2 - 1), (w // 2 + 2, w - margin)]
    for left, right in columns:
        for y in range(margin, h - margin, pitch):
            if rng.random() < 0.1:  # a paragraph break
                continue
            x, end = left, right - (rng.randint(0, (right - left) // 2) if rng.random() < 0.2 else 0)
            while x < end:
                word = min(end, x + rng.randint(2, 7) * max(1, round(s)))
                ink = rng.randint(10, 90)
                draw.line([(x, y), (word, y)], fill=(ink, ink, ink + rng.randint(0, 30)), width=max(1, round(s)))
                x = word + max(2, round(2 * s))


def _map(img: Image.Image, rng: random.Random, s: float) -> None:
    w, h = img.size
    palette = [(200, 225, 170), (235, 220, 170), (215, 200, 230), (190, 215, 225), (240, 200, 180),
               (225, 235, 200), (205, 190, 160)]
    seeds = [(rng.uniform(0, w), rng.uniform(0, h), rng.choice(palette)) for _ in range(rng.randint(4, 7))]
    region = [[min(range(len(seeds)), key=lambda k: (x - seeds[k][0]) ** 2 + (y - seeds[k][1]) ** 2)
               for x in range(w)] for y in range(h)]
    pixels = img.load()
    for y in range(h):
        for x in range(w):
            here = region[y][x]
            border = (x + 1 < w and region[y][x + 1] != here) or (y + 1 < h and region[y + 1][x] != here)
            pixels[x, y] = (90, 90, 90) if border else seeds[here][2]
    draw = ImageDraw.Draw(img)
    phase, amp = rng.uniform(0, 2 * math.pi), rng.uniform(2, 6) * s
    y_river = rng.uniform(0.3, 0.7) * h
    river = [(x, y_river + amp * math.sin(phase + x / (5 * s))) for x in range(0, w + 1, 2)]
    draw.line(river, fill=(50, 110, 210), width=max(2, round(2 * s)))
    for _ in range(rng.randint(1, 2)):  # roads
        draw.line([(rng.uniform(0, w), 0), (rng.uniform(0, w), rng.uniform(h / 2, h)), (rng.uniform(0, w), h)],
                  fill=(205, 70, 40), width=max(1, round(s)))


_BODY = {"chart": _chart, "photo": _photo, "text_page": _text_page, "map": _map}
_BODY_BACKGROUND = {"chart": [(255, 255, 255)], "photo": [(0, 0, 0)],
                    "text_page": [(255, 255, 255), (250, 246, 230), (244, 240, 232)], "map": [(0, 0, 0)]}
_BAND_COLOURS = [(255, 255, 255), (250, 246, 230), (236, 236, 236), (255, 248, 214)]
_INKS = [(0, 0, 0), (20, 30, 90), (110, 10, 10), (30, 30, 30)]


def render_example(kind: str, word: str, rng: random.Random, size: int = DEFAULT_SIZE,
                   clarity: float = 1.0) -> Image.Image:
    """Render one ``size`` x ``size`` RGB image of ``kind`` with ``word`` as its headline.

    Args:
        kind: one of :data:`KINDS`.
        word: one of :data:`WORDS` (any short word renders; the contract allows only these).
        rng: the only source of randomness; the same state gives the same image.
        size: width and height in pixels.
        clarity: the headline ink's contrast against its band, 0 (invisible) to 1 (full).

    Raises:
        ValueError: an unknown kind, a clarity outside 0..1, or a size too small for the headline.
    """
    if kind not in _BODY:
        raise ValueError(f"unknown image kind {kind!r}; kinds are {list(KINDS)}")
    if not 0.0 <= clarity <= 1.0:
        raise ValueError(f"clarity ({clarity}) must be within 0..1")
    band = max(8, round(size * BAND))
    img = Image.new("RGB", (size, size), rng.choice(_BAND_COLOURS))
    body = Image.new("RGB", (size, size - band), rng.choice(_BODY_BACKGROUND[kind]))
    _BODY[kind](body, rng, size / 64)
    img.paste(body, (0, band))
    draw = ImageDraw.Draw(img)
    draw.line([(0, band - 1), (size, band - 1)], fill=(60, 60, 60))
    font = headline_font(word, size - 4, band - 3)
    left, top, right, bottom = font.getbbox(word, stroke_width=1)
    slack = size - 4 - (right - left)
    x = 2 + rng.randint(0, slack) - left
    y = (band - 1 - (bottom - top)) // 2 - top
    ink = _mix(img.getpixel((0, 0)), rng.choice(_INKS), clarity)
    draw.text((x, y), word, font=font, fill=ink, stroke_width=1, stroke_fill=ink)
    return img


def make_example(rng: random.Random, size: int = DEFAULT_SIZE, kind: str | None = None,
                 word: str | None = None) -> tuple[Image.Image, VisionTarget]:
    """One image and its target; kind, word and clarity are drawn from ``rng`` unless given."""
    kind = kind or rng.choice(KINDS)
    word = word or rng.choice(WORDS)
    clarity = round(rng.uniform(*CLARITY), 2)
    image = render_example(kind, word, rng, size, clarity)
    return image, VisionTarget(image_kind=kind, headline=word, caption=caption_for(kind, word), confidence=clarity)


# -- datasets ----------------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def generate_dataset(n: int, seed: int, out_dir: Path, *, split: str = "train", size: int = DEFAULT_SIZE,
                     exclude: frozenset[str] | set[str] = frozenset()) -> Path:
    """Render ``n`` examples into ``out_dir/<split>/NNNNN.png`` and write ``out_dir/<split>.jsonl``.

    Kind and word cycle through every pair in a shuffled order, so any 32 consecutive examples hold each
    once. No two images of the split are the same bytes, and none is in ``exclude`` (sha256 hex digests).

    Returns:
        The JSONL path; its ``image`` fields are relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"vision:{seed}")
    pairs: list[tuple[str, str]] = []
    seen = set(exclude)
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            if not pairs:
                pairs = [(k, w) for k in KINDS for w in WORDS]
                rng.shuffle(pairs)
            kind, word = pairs.pop()
            for _attempt in range(100):
                image, target = make_example(rng, size, kind, word)
                data = _png(image)
                digest = hashlib.sha256(data).hexdigest()
                if digest not in seen:
                    break
            else:
                raise RuntimeError(f"100 renders of {kind}/{word} were all duplicates; is size ({size}) too small?")
            seen.add(digest)
            relative = f"{split}/{i:05d}.png"
            (out_dir / relative).write_bytes(data)
            fh.write(json.dumps({"image": relative, "text": INSTRUCTION, "target": target.model_dump(mode="json")},
                                separators=(",", ":")) + "\n")
    return path


def write_splits(out_dir: Path, n_train: int, n_eval: int, seed: int = 0,
                 size: int = DEFAULT_SIZE) -> tuple[Path, Path]:
    """A training and a held-out split in ``out_dir`` from disjoint seeds, sharing no image."""
    train = generate_dataset(n_train, seed, out_dir, split="train", size=size)
    used = frozenset(hashlib.sha256(p.read_bytes()).hexdigest() for p in (Path(out_dir) / "train").glob("*.png"))
    held = generate_dataset(n_eval, seed + 1_000_000, out_dir, split="eval", size=size, exclude=used)
    return train, held


def _image_path(value: object, root: Path, path: Path, line: int) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, line, f"image must be a non-empty relative path, got {value!r}")
    if "\\" in value or PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        raise DataError(path, line, f"image {value!r} must be a relative POSIX path inside the dataset root")
    if ".." in PurePosixPath(value).parts:
        raise DataError(path, line, f"image {value!r} must not contain '..'")
    try:
        resolved = (root / value).resolve(strict=True)
    except OSError:
        raise DataError(path, line, f"image {value!r} does not exist under {root}") from None
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(path, line, f"image {value!r} resolves outside the dataset root {root} (a link?)")
    if not resolved.is_file():
        raise DataError(path, line, f"image {value!r} is not a file")
    return resolved


def _vision_record(raw: str, root: Path, path: Path, line: int, limits: AdmissionLimits) -> VisionRecord:
    data = json_record(raw, path, line, _RECORD_FIELDS)
    if not isinstance(data["text"], str) or not data["text"].strip():
        raise DataError(path, line, f"text must be a non-empty string, got {data['text']!r}")
    try:
        target = VisionTarget.model_validate(data["target"])
    except ValidationError as exc:
        raise DataError(path, line, f"target does not validate against VisionTarget: "
                                    f"{format_validation_error(exc)}") from None
    image = _image_path(data["image"], root, path, line)
    size = image.stat().st_size
    if size > limits.max_image_bytes:  # refused before reading it
        raise DataError(path, line, f"image {data['image']!r} is {size} bytes, more than max_image_bytes "
                                    f"({limits.max_image_bytes})")
    try:
        admitted = admit_image(image.read_bytes(), limits, field=f"image {data['image']!r}")
    except ServeError as exc:
        raise DataError(path, line, str(exc)) from None
    return VisionRecord(image, data["text"], target, admitted.width, admitted.height, str(path), line)


def load_vision_jsonl(path: Path, root: Path | None = None, limits: AdmissionLimits = LIMITS) -> list[VisionRecord]:
    """Read and check a vision JSONL; blank lines are skipped.

    Args:
        path: the JSONL file.
        root: the folder ``image`` paths are relative to (and must stay inside); the file's folder by default.
        limits: the admission limits every image must pass, as at serving.

    Raises:
        DataError: the file is unreadable or holds no record, or a line is invalid JSON, lacks or adds a
            field, has a bad target, or names an image that is absolute, escapes ``root``, is missing or
            does not pass admission (file and 1-based line named).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    records = [_vision_record(raw, root, path, n, limits) for n, raw in jsonl_lines(path, "vision data")]
    if not records:
        raise DataError(path, None, "no records (every line is blank)")
    return records
