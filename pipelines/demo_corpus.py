"""A small Places365-layout corpus of procedurally drawn scenes, for demos and tests.

    python pipelines/demo_corpus.py --out data/demo [--seed 0]
    places-demo-corpus ...                (the same, installed with the package)

Writes ``categories.txt``, ``train.txt`` (imbalanced 10:1, as Places2), ``val.txt`` (balanced, bare
file names as Places365's val list), ``test.txt`` (file names only) and the images under
``data_256/``, ``val_256/`` and ``test_256/``.  Scenes share colours and layouts across classes (beach
vs ocean vs lake, desert vs beach sand, city at night vs skyscrapers) so the task is learnable but not
trivial.  ``train.txt`` also lists the kinds of broken file a real crawl holds, so the sharding
quarantine has something to show; a few valid oddities (CMYK, greyscale, palette PNG, EXIF-rotated,
progressive, non-square) exercise the conversions.  Deterministic per seed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from common.console import report_failure
from common.storage import Location
from common.tool_settings import new_parser, parse

CLASSES = ["/b/beach", "/c/city_night", "/d/desert", "/f/field", "/f/forest", "/l/lake",
           "/m/mountain", "/o/ocean", "/s/skyscraper", "/s/snowfield"]
TRAIN_MAX, TRAIN_MIN, VAL_PER_CLASS, TEST_PER_CLASS = 400, 40, 40, 10
SIZE = 256
# Scene attributes (the SUN attribute database's kind, multi-label), true of each image by construction:
# what its scene and its distractor patch contain, and which nuisances it got.
ATTRIBUTES = ("water", "sand", "snow", "vegetation", "buildings", "night", "horizon", "haze", "colourless")
CONTENT = {"beach": {"water", "sand"}, "city_night": {"buildings"}, "desert": {"sand"}, "field": {"vegetation"},
           "forest": {"vegetation"}, "lake": {"water", "vegetation"}, "mountain": {"vegetation"}, "ocean": {"water"},
           "skyscraper": {"buildings"}, "snowfield": {"snow"}}


def train_counts() -> list[int]:
    """Geometric from TRAIN_MAX down to TRAIN_MIN: the largest class is 10x the smallest."""
    ratios = np.geomspace(TRAIN_MAX, TRAIN_MIN, len(CLASSES))
    return [int(round(r)) for r in ratios]


# -- drawing -----------------------------------------------------------------------------------
def _jitter(rng, rgb, amount=25):
    return np.clip(np.array(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _vertical(h, w, top, bottom):
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()


def _sky(rng, h, w, night=False):
    if night:
        return _vertical(h, w, _jitter(rng, (10, 12, 35), 8), _jitter(rng, (40, 35, 60), 10))
    return _vertical(h, w, _jitter(rng, (70, 130, 215)), _jitter(rng, (185, 210, 235)))


def _paint_below(img, horizon, layer):
    h, w, _ = img.shape
    rows = np.arange(h)[:, None]
    mask = rows >= horizon[None, :] if np.ndim(horizon) else rows >= horizon
    img[:] = np.where(np.broadcast_to(mask[..., None], img.shape), layer, img)


def _texture(rng, h, w, scale, amount):
    small = rng.normal(0, amount, (max(2, h // scale), max(2, w // scale), 1)).astype(np.float32)
    return np.asarray(Image.fromarray(small[..., 0]).resize((w, h), Image.Resampling.BILINEAR))[..., None]


def render(cls: str, rng: np.random.Generator, w: int = SIZE, h: int = SIZE) -> tuple[np.ndarray, set[str]]:
    """One scene of class `cls`, with the nuisances that keep it from being trivial: a crop of a larger
    view, a distractor from another class, haze, near-greyscale colour, brightness and noise; and the
    names of the ATTRIBUTES it has."""
    name = cls.rsplit("/", 1)[-1]
    attributes = set(CONTENT[name]) | ({"night"} if name == "city_night" else set()) | \
        ({"horizon"} if name != "forest" else set())
    big_w, big_h = int(w * rng.uniform(1.0, 1.5)), int(h * rng.uniform(1.0, 1.5))
    img = _scene(cls, rng, big_w, big_h)
    y0, x0 = rng.integers(0, big_h - h + 1), rng.integers(0, big_w - w + 1)
    img = img[y0:y0 + h, x0:x0 + w].copy()
    if rng.random() < 0.5:  # a patch of another class's scene: a tree line at the beach, a tower in a field
        other = CLASSES[int(rng.integers(len(CLASSES)))]
        pw, ph = int(w * rng.uniform(0.2, 0.45)), int(h * rng.uniform(0.2, 0.45))
        px, py = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        img[py:py + ph, px:px + pw] = _scene(other, rng, pw, ph).astype(np.float32)
        attributes |= CONTENT[other.rsplit("/", 1)[-1]]
    if rng.random() < 0.3:  # haze
        img = img * (1 - (a := rng.uniform(0.2, 0.55))) + a * rng.uniform(150, 230)
        attributes.add("haze")
    if rng.random() < 0.25:  # nearly colourless: shape must do the work
        grey = img.mean(2, keepdims=True)
        img = grey + (img - grey) * rng.uniform(0.0, 0.25)
        attributes.add("colourless")
    img = img * rng.uniform(0.7, 1.25) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), attributes


def _scene(cls: str, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    name = cls.rsplit("/", 1)[-1]
    xs = np.arange(w, dtype=np.float32)
    horizon = int(h * rng.uniform(0.35, 0.6))
    img = _sky(rng, h, w, night=(name == "city_night"))
    if name in ("beach", "ocean", "lake"):
        water_top = horizon
        sand_top = int(h * rng.uniform(0.65, 0.85)) if name == "beach" else h
        water = _vertical(h, w, _jitter(rng, (20, 70, 120)), _jitter(rng, (40, 120, 150)))
        water += np.sin(np.arange(h)[:, None, None] * rng.uniform(0.3, 0.8) + xs[None, :, None] * 0.05) * 8
        _paint_below(img, water_top, water)
        if name == "lake":  # wooded far shore and a near bank
            shore = horizon + (6 + 10 * rng.random() * np.abs(np.sin(xs / rng.uniform(8, 30)))).astype(int)
            _paint_below(img, horizon - 12, _jitter(rng, (40, 80, 40)) + _texture(rng, h, w, 4, 20))
            _paint_below(img, shore, water)
            _paint_below(img, int(h * rng.uniform(0.85, 0.95)), _jitter(rng, (70, 100, 50)))
        if name == "beach":
            edge = sand_top + (4 * np.sin(xs / rng.uniform(10, 25))).astype(int)
            _paint_below(img, edge, _jitter(rng, (215, 195, 150)) + _texture(rng, h, w, 3, 10))
    elif name == "desert":
        dunes = horizon + (h * 0.08 * np.sin(xs / rng.uniform(20, 60) + rng.uniform(0, 6))).astype(int)
        _paint_below(img, dunes, _vertical(h, w, _jitter(rng, (225, 170, 100)), _jitter(rng, (180, 120, 60))))
    elif name == "snowfield":
        img = _vertical(h, w, _jitter(rng, (170, 190, 215), 15), _jitter(rng, (225, 230, 240), 10))
        _paint_below(img, horizon, _jitter(rng, (235, 238, 245), 8) + _texture(rng, h, w, 6, 6))
    elif name == "field":
        grass = _vertical(h, w, _jitter(rng, (150, 170, 60)), _jitter(rng, (70, 130, 40)))
        _paint_below(img, horizon, grass + _texture(rng, h, w, 2, 15))
    elif name == "forest":
        img = _jitter(rng, (40, 90, 35), 15) + _texture(rng, h, w, 3, 35) + np.zeros((h, w, 3), np.float32)
        for _ in range(rng.integers(4, 12)):
            x0, tw = rng.integers(0, w), rng.integers(3, 12)
            img[:, x0:x0 + tw] = _jitter(rng, (70, 50, 30), 10)
    elif name == "mountain":
        peaks = np.full(w, h, np.float32)
        for _ in range(rng.integers(2, 5)):
            cx, top, slope = rng.uniform(0, w), rng.uniform(0.15, 0.45) * h, rng.uniform(0.5, 1.5)
            peaks = np.minimum(peaks, top + slope * np.abs(xs - cx))
        _paint_below(img, peaks.astype(int), _jitter(rng, (110, 100, 95)) + _texture(rng, h, w, 4, 15))
        _paint_below(img, int(h * rng.uniform(0.75, 0.9)), _jitter(rng, (80, 110, 60)))
    elif name in ("city_night", "skyscraper"):
        night = name == "city_night"
        for _ in range(rng.integers(5, 12)):
            x0, bw = int(rng.integers(0, w)), int(rng.integers(15, 50))
            top = int(h * rng.uniform(0.1 if not night else 0.3, 0.6))
            colour = _jitter(rng, (25, 25, 35) if night else (130, 135, 145), 12)
            img[top:, x0:x0 + bw] = colour
            lit = rng.random(((h - top) // 6 + 1, bw // 5 + 1)) < (0.35 if night else 0.0)
            for (r, c) in zip(*np.nonzero(lit)):
                img[top + 6 * r + 2: top + 6 * r + 4, x0 + 5 * c + 1: x0 + 5 * c + 3] = _jitter(rng, (250, 220, 120), 20)
    return np.clip(img, 0, 255)


def _encode(arr: np.ndarray, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def _draw_job(job) -> tuple[bytes, str]:
    """(JPEG bytes, the image's attributes as a CSV row's values)."""
    seed, split, index, cls_id, w, h = job
    rng = np.random.default_rng([seed, ["train", "val", "test"].index(split), index])
    image, attributes = render(CLASSES[cls_id], rng, w, h)
    return _encode(image), _csv_values(attributes)


def _csv_values(attributes: set[str]) -> str:
    return ",".join("1" if a in attributes else "0" for a in ATTRIBUTES)


# -- the corpus --------------------------------------------------------------------------------
def _plan(seed: int):
    """(split, index, class id, w, h, relative path) for every generated image."""
    rng = np.random.default_rng(seed)
    jobs = []
    for cid, (cls, n) in enumerate(zip(CLASSES, train_counts())):
        for i in range(n):
            # Most images match the target geometry (passed through); some need a resize.
            w, h = (SIZE, SIZE) if rng.random() < 0.8 else ((320, 240) if rng.random() < 0.5 else (240, 300))
            jobs.append(("train", len(jobs), cid, w, h, f"data_256{cls}/{i + 1:08d}.jpg"))
    order = rng.permutation(len(CLASSES) * VAL_PER_CLASS)
    for j, k in enumerate(order):
        jobs.append(("val", j, int(k) % len(CLASSES), SIZE, SIZE, f"val_256/demo_val_{j + 1:08d}.jpg"))
    order = rng.permutation(len(CLASSES) * TEST_PER_CLASS)
    for j, k in enumerate(order):
        jobs.append(("test", j, int(k) % len(CLASSES), SIZE, SIZE, f"test_256/demo_test_{j + 1:08d}.jpg"))
    return jobs


def _oddities(seed: int, out: str) -> tuple[list[str], list[str]]:
    """Broken and odd files appended to train.txt, what a crawl really holds: (list lines, attribute rows;
    every one has a row, so each is quarantined for what is wrong with the image itself)."""
    rng = np.random.default_rng([seed, 99])
    (beach, beach_attributes), (forest, forest_attributes) = render(CLASSES[0], rng), render(CLASSES[4], rng)
    good = _encode(beach)
    odd = {
        "data_256/b/beach/odd_cmyk.jpg": (_encode_pil(Image.fromarray(beach).convert("CMYK")), 0),
        "data_256/f/forest/odd_gray.jpg": (_encode_pil(Image.fromarray(forest).convert("L")), 4),
        "data_256/f/forest/odd_palette.jpg": (_encode_pil(Image.fromarray(forest).quantize(64), "PNG"), 4),
        "data_256/b/beach/odd_progressive.jpg": (_encode(beach, progressive=True), 0),
        "data_256/b/beach/odd_exif_rotated.jpg": (_exif_rotated(beach), 0),
        "data_256/b/beach/broken_empty.jpg": (b"", 0),
        "data_256/b/beach/broken_truncated.jpg": (good[: len(good) // 2], 0),
        "data_256/f/forest/broken_html.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", 4),
    }
    lines, rows = [], []
    for rel, (data, label) in odd.items():
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        lines.append(f"/{rel.split('/', 1)[1]} {label}")
        rows.append(f"/{rel.split('/', 1)[1]},{_csv_values(beach_attributes if label == 0 else forest_attributes)}")
    lines.append("/b/beach/broken_missing_file.jpg 0")
    rows.append(f"/b/beach/broken_missing_file.jpg,{_csv_values(beach_attributes)}")
    lines.append(f"/f/forest/00000001.jpg {len(CLASSES) + 3}")  # label out of range
    return lines, rows


def _encode_pil(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _exif_rotated(arr: np.ndarray) -> bytes:
    """Pixels stored rotated, with the EXIF tag a camera writes to say how to show them."""
    img = Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def make_demo_corpus(out: str, seed: int = 0, workers: int | None = None) -> dict:
    out = os.path.abspath(out)
    jobs = _plan(seed)
    with ProcessPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        drawn = pool.map(_draw_job, [(seed, s, i, c, w, h) for s, i, c, w, h, _ in jobs], chunksize=32)
        values = []
        for (split, _, _, _, _, rel), (data, row) in zip(jobs, drawn):
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            values.append(row)
    listed = [f"/{rel.split('/', 1)[1]}" if s == "train" else os.path.basename(rel) for s, _, _, _, _, rel in jobs]
    train = [f"{p} {c}" for p, (s, _, c, _, _, _) in zip(listed, jobs) if s == "train"]
    train_rows = [f"{p},{v}" for p, v, job in zip(listed, values, jobs) if job[0] == "train"]
    odd_lines, odd_rows = _oddities(seed, out)
    train, train_rows = train + odd_lines, train_rows + odd_rows
    val = [f"{p} {c}" for p, (s, _, c, _, _, _) in zip(listed, jobs) if s == "val"]
    val_rows = [f"{p},{v}" for p, v, job in zip(listed, values, jobs) if job[0] == "val"]
    test = [p for p, job in zip(listed, jobs) if job[0] == "test"]
    header = ",".join(("path",) + ATTRIBUTES)
    lists = {"categories.txt": [f"{c} {i}" for i, c in enumerate(CLASSES)], "train.txt": train, "val.txt": val,
             "attributes_train.csv": [header, *train_rows], "attributes_val.csv": [header, *val_rows],
             "test.txt": test}  # test.txt last: its presence means the corpus is complete (pipelines/demo_shards.py)
    for name, lines in lists.items():
        Location.write_atomic_uri(os.path.join(out, name), ("\n".join(lines) + "\n").encode())
    return {"out": out, "classes": len(CLASSES), "train": len(train), "val": len(val), "test": len(test)}


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("--out", required=True, help="folder for the images, the lists and the categories file")
    p.add_argument("--seed", type=int, default=0, help="seeds the generated images")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    try:
        summary = make_demo_corpus(a.out, a.seed)
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("demo_corpus.py", exc, a.verbose)
    print(f"demo corpus: {summary['classes']} classes, {summary['train']} train entries "
          f"(counts {train_counts()[0]}..{train_counts()[-1]}), {summary['val']} val, {summary['test']} test "
          f"in {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
