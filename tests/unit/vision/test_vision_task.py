"""The newsreader's synthetic visual task (training/vision_task.py): deterministic rendering of every kind and
word, a contract that follows from the pixels, disjoint splits, and a loader that names the bad line."""

from __future__ import annotations

import hashlib
import io
import json
import random
import statistics

import pytest
from PIL import Image, ImageFont, ImageStat
from pydantic import ValidationError

from training.errors import DataError
from training.vision_task import (BAND, DEFAULT_SIZE, INSTRUCTION, KINDS, WORDS, VisionTarget, caption_for,
                                  generate_dataset, headline_font, load_vision_jsonl, make_example, render_example,
                                  write_splits)


def _band(img: Image.Image) -> Image.Image:
    return img.crop((0, 0, img.width, max(8, round(img.height * BAND)) - 1))


def _ink_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the band's pixels that differ from its background."""
    band = _band(img)
    background = Image.new("RGB", band.size, band.getpixel((0, 0)))
    from PIL import ImageChops

    return ImageChops.difference(band, background).convert("L").point(lambda v: 255 if v > 24 else 0).getbbox()


# -- rendering ---------------------------------------------------------------------------------------------


def test_the_embedded_font_scales_without_font_files():
    font = ImageFont.load_default(size=30)
    assert isinstance(font, ImageFont.FreeTypeFont)
    assert font.getbbox("budget")[2] > ImageFont.load_default(size=12).getbbox("budget")[2]
    assert all(headline_font(w, DEFAULT_SIZE - 4, 18).size >= 16 for w in WORDS)  # large at 64 x 64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("word", WORDS)
def test_every_kind_and_word_renders_with_a_large_headline(kind, word):
    img = render_example(kind, word, random.Random(f"{kind}{word}"))
    assert (img.mode, img.size) == ("RGB", (DEFAULT_SIZE, DEFAULT_SIZE))
    box = _ink_box(img)
    assert box is not None
    assert box[2] - box[0] >= 0.5 * DEFAULT_SIZE  # the word spans most of the width
    assert box[3] - box[1] >= 10  # and most of the band's height


def test_same_rng_state_gives_identical_pixels_and_another_differs():
    a = render_example("map", "vote", random.Random(3))
    b = render_example("map", "vote", random.Random(3))
    c = render_example("map", "vote", random.Random(4))
    assert a.tobytes() == b.tobytes() != c.tobytes()


@pytest.mark.parametrize("size", [32, 64, 96, 128])
def test_the_size_is_a_parameter(size):
    img, target = make_example(random.Random(0), size)
    assert img.size == (size, size)
    assert _ink_box(img) is not None
    assert target.caption == caption_for(target.image_kind, target.headline)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"unknown image kind 'video'; kinds are \['chart'"):
        render_example("video", "vote", random.Random(0))
    with pytest.raises(ValueError, match=r"clarity \(1.5\)"):
        render_example("map", "vote", random.Random(0), clarity=1.5)
    with pytest.raises(ValueError, match="too small for the headline"):
        render_example("map", "budget", random.Random(0), size=12)


def test_confidence_is_the_headlines_contrast():
    def band_contrast(clarity):
        img = render_example("chart", "storm", random.Random(1), clarity=clarity)
        lo, hi = _band(img).convert("L").getextrema()
        return hi - lo

    contrasts = [band_contrast(c) for c in (0.35, 0.6, 1.0)]
    assert contrasts == sorted(contrasts) and contrasts[0] < contrasts[-1] - 60


def _features(img: Image.Image) -> tuple[float, ...]:
    """White share, dark share, mean saturation, distinct colours per pixel, share of rows without ink."""
    body = img.crop((0, max(8, round(img.height * BAND)), img.width, img.height))
    w, h = body.size
    px = list(body.get_flattened_data())
    dark = [max(p) < 110 for p in px]
    return (sum(all(c > 235 for c in p) for p in px) / len(px), sum(dark) / len(px),
            ImageStat.Stat(body.convert("HSV")).mean[1] / 255, len(set(px)) / len(px),
            sum(not any(dark[y * w:(y + 1) * w]) for y in range(h)) / h)


def test_the_kinds_are_visually_distinct():
    """A nearest-centroid classifier on five crude pixel statistics tells every kind apart."""
    rng = random.Random(11)
    feats = {k: [_features(render_example(k, rng.choice(WORDS), rng)) for _ in range(16)] for k in KINDS}
    centroids = {k: [statistics.mean(col) for col in zip(*v[:8])] for k, v in feats.items()}

    def nearest(f):
        return min(centroids, key=lambda k: sum((a - b) ** 2 for a, b in zip(f, centroids[k])))

    assert [nearest(f) for k in KINDS for f in feats[k][8:]] == [k for k in KINDS for _ in range(8)]


# -- the contract ------------------------------------------------------------------------------------------


def test_the_target_contract():
    target = VisionTarget(image_kind="text_page", headline="vote", caption="a page of text about vote", confidence=0.5)
    assert list(target.model_dump()) == ["image_kind", "headline", "caption", "confidence"]
    assert [caption_for(k, "fire") for k in KINDS] == ["a chart about fire", "a photo about fire",
                                                       "a page of text about fire", "a map about fire"]
    good = target.model_dump()
    for bad, needle in [({"caption": "a map about vote"}, "must be 'a page of text about vote'"),
                        ({"confidence": 1.5}, "confidence"), ({"image_kind": "video"}, "image_kind"),
                        ({"headline": "peace"}, "headline"), ({"extra": 1}, "extra")]:
        with pytest.raises(ValidationError, match=needle):
            VisionTarget.model_validate({**good, **bad})


# -- datasets ----------------------------------------------------------------------------------------------


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_dataset(12, 5, tmp_path / "a")
    generate_dataset(12, 5, tmp_path / "b")
    generate_dataset(12, 6, tmp_path / "c")
    assert a == tmp_path / "a" / "train.jsonl"
    files = _files(tmp_path / "a")
    assert len(files) == 13 and files == _files(tmp_path / "b")
    assert files["train.jsonl"] != _files(tmp_path / "c")["train.jsonl"]


def test_a_dataset_covers_every_pair_and_loads(tmp_path):
    path = generate_dataset(32, 0, tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = {(r["target"]["image_kind"], r["target"]["headline"]) for r in lines}
    assert pairs == {(k, w) for k in KINDS for w in WORDS}
    assert all(r["text"] == INSTRUCTION and r["image"].startswith("train/") for r in lines)
    records = load_vision_jsonl(path, tmp_path)
    assert len(records) == 32 and records[3].line == 4
    assert {(r.width, r.height) for r in records} == {(64, 64)}
    assert records[0].load_image().size == (64, 64)
    assert records[0].target == VisionTarget.model_validate(lines[0]["target"])


def test_the_held_out_split_shares_no_image_with_training(tmp_path):
    train, held = write_splits(tmp_path, 40, 24, seed=2)
    digests = {}
    for path in (train, held):
        digests[path.name] = [hashlib.sha256((tmp_path / json.loads(line)["image"]).read_bytes()).hexdigest()
                              for line in path.read_text().splitlines()]
    assert len(set(digests["train.jsonl"])) == 40 and len(set(digests["eval.jsonl"])) == 24
    assert not set(digests["train.jsonl"]) & set(digests["eval.jsonl"])
    assert {json.loads(line)["image"].split("/")[0] for line in held.read_text().splitlines()} == {"eval"}
    assert len(load_vision_jsonl(held)) == 24


def test_an_excluded_image_is_drawn_again(tmp_path):
    first = generate_dataset(1, 9, tmp_path / "a")
    digest = hashlib.sha256((tmp_path / "a" / "train" / "00000.png").read_bytes()).hexdigest()
    generate_dataset(1, 9, tmp_path / "b", exclude={digest})
    again = (tmp_path / "b" / "train" / "00000.png").read_bytes()
    assert hashlib.sha256(again).hexdigest() != digest
    assert json.loads(first.read_text())["target"]["image_kind"] == \
        json.loads((tmp_path / "b" / "train.jsonl").read_text())["target"]["image_kind"]  # same pair, new draw


# -- the loader's refusals ---------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    path = generate_dataset(3, 1, tmp_path)
    good = json.loads(path.read_text().splitlines()[0])
    return tmp_path, good


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _bad_lines(root, good):
    (root / "notes.png").write_text("not an image")
    (root / "still.gif").write_bytes(_png(Image.new("RGB", (16, 16)), "GIF"))
    (root / "tiny.png").write_bytes(_png(Image.new("RGB", (4, 4))))
    (root / "cut.png").write_bytes(_png(Image.new("RGB", (32, 32), "red"))[:60])
    (root / "dir.png").mkdir()
    target = dict(good["target"])
    return [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"image": good["image"], "text": INSTRUCTION}, "missing field(s) ['target']"),
        ({**good, "label": 1}, "unknown field(s) ['label']"),
        ({**good, "text": "  "}, "text must be a non-empty string"),
        ({**good, "target": {**target, "caption": "a photo about x"}}, "target does not validate against VisionTarget"),
        ({**good, "target": {**target, "confidence": -0.1}}, "target does not validate"),
        ({**good, "image": 7}, "image must be a non-empty relative path"),
        ({**good, "image": "/etc/passwd"}, "must be a relative POSIX path"),
        ({**good, "image": "C:/images/a.png"}, "must be a relative POSIX path"),
        ({**good, "image": "train\\00000.png"}, "must be a relative POSIX path"),
        ({**good, "image": "../outside.png"}, "must not contain '..'"),
        ({**good, "image": "train/../../outside.png"}, "must not contain '..'"),
        ({**good, "image": "train/99999.png"}, "does not exist"),
        ({**good, "image": "dir.png"}, "is not a file"),
        ({**good, "image": "notes.png"}, "not an image in a supported format"),
        ({**good, "image": "still.gif"}, "is GIF; supported formats are PNG, JPEG and WebP"),
        ({**good, "image": "tiny.png"}, "min_image_side (8)"),
        ({**good, "image": "cut.png"}, "truncated or corrupt PNG"),
    ]


def test_each_bad_line_is_refused_with_its_line_number(dataset):
    root, good = dataset
    for bad, needle in _bad_lines(root, good):
        path = root / "bad.jsonl"
        lines = [good, "", good, bad, good]
        path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
        with pytest.raises(DataError) as err:
            load_vision_jsonl(path, root)
        assert err.value.line == 4 and f"{path}:4:" in str(err.value), (needle, str(err.value))
        assert needle in str(err.value), (needle, str(err.value))


def test_a_link_out_of_the_root_is_refused(dataset, tmp_path_factory):
    root, good = dataset
    outside = tmp_path_factory.mktemp("outside") / "x.png"
    outside.write_bytes((root / good["image"]).read_bytes())
    (root / "link.png").symlink_to(outside)
    path = root / "link.jsonl"
    path.write_text(json.dumps({**good, "image": "link.png"}) + "\n")
    with pytest.raises(DataError, match=r"link.jsonl:1: image 'link.png' resolves outside the dataset root"):
        load_vision_jsonl(path, root)


def test_an_oversized_image_is_refused_before_it_is_read(dataset):
    from deployments.limits import AdmissionLimits

    root, good = dataset
    path = root / "one.jsonl"
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"one.jsonl:1: image .* more than max_image_bytes \(10\)"):
        load_vision_jsonl(path, root, AdmissionLimits(max_image_bytes=10))


def test_file_level_problems_have_no_line(tmp_path):
    with pytest.raises(DataError, match="cannot read vision data") as err:
        load_vision_jsonl(tmp_path / "missing.jsonl")
    assert err.value.line is None
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="no records"):
        load_vision_jsonl(tmp_path / "blank.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="not UTF-8"):
        load_vision_jsonl(tmp_path / "latin.jsonl")
