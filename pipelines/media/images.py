"""Turn whatever a crawl saved under an image name into a baseline RGB JPEG, or say why not.

`prepare_image` fully decodes every input (a header that parses is not a valid image), applies EXIF
orientation, converts every colour model to 8-bit RGB, resizes to the requested geometry, and
re-encodes.  A source that already is a baseline RGB JPEG of the target geometry is returned byte
for byte: re-encoding it would only lose quality and time.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps

# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb check raises only at 2x its limit and warns below; we apply `max_pixels` ourselves.
Image.MAX_IMAGE_PIXELS = None

RESIZE_MODES = ("square", "shorter", "keep")
EXIF_ORIENTATION = 0x0112
JPEG_MAX_SIDE = 65535  # the format's limit: a larger output could never be written
SENSOR_DEPTHS = (8, 10, 12, 14, 16)


class ImageRejected(Exception):
    """The input cannot become a training image; `reason` is written to the quarantine report."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.reason = str(self)


@dataclass(frozen=True)
class ImageSettings:
    image_size: int = 256
    resize: str = "square"
    quality: int = 90
    max_pixels: int = 100_000_000

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not 16 <= self.image_size <= 8192:
            raise ValueError(f"image_size must be in [16, 8192], got {self.image_size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    orig_size: tuple[int, int]  # (w, h) after EXIF orientation, before resizing
    passthrough: bool


def target_size(size: tuple[int, int], settings: ImageSettings) -> tuple[int, int]:
    w, h = size
    s = settings.image_size
    if settings.resize == "square":
        return (s, s)
    if settings.resize == "shorter":
        if w <= h:
            return (s, max(1, round(h * s / w)))
        return (max(1, round(w * s / h)), s)
    return (w, h)


def prepare_image(data: bytes, settings: ImageSettings) -> PreparedImage:
    if not data:
        raise ImageRejected("empty_file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", _message(exc)) from exc
    except Exception as exc:
        if "truncated" in str(exc).lower():  # cut inside the header
            raise ImageRejected("truncated_image", _message(exc)) from exc
        raise ImageRejected("not_an_image", _describe(exc, data)) from exc

    w, h = img.size
    if w * h > settings.max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} = {w * h} pixels > limit {settings.max_pixels}")
    if w < 1 or h < 1:
        raise ImageRejected("corrupt_image", f"size {w}x{h}")

    orientation = _orientation(img)
    oriented = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    out_size = target_size(oriented, settings)
    if out_size[0] * out_size[1] > settings.max_pixels or max(out_size) > JPEG_MAX_SIDE:
        # a sliver (2x4000) resized to a shorter side of 256 would be 256x512000: refused before decoding
        raise ImageRejected("too_many_pixels", f"{oriented[0]}x{oriented[1]} resized to {out_size[0]}x"
                                               f"{out_size[1]}: over the limit of {settings.max_pixels} pixels or "
                                               f"{JPEG_MAX_SIDE} a side")

    clean = _check_jpeg_data(data, img)
    if _is_passthrough_candidate(img, orientation, oriented, out_size):
        if not clean:
            _decode(img)  # validates every scan; raises on truncation
        return PreparedImage(data, oriented, passthrough=True)

    if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        # Reduced-size DCT decoding: still reads every byte (so it validates), ~2x faster for big inputs.
        draft_to = out_size if orientation in (1, 2, 3, 4) else (out_size[1], out_size[0])
        img.draft(img.mode, draft_to)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF / multi-page TIFF: the first frame is the image
    _decode(img)
    img = ImageOps.exif_transpose(img) if orientation != 1 else img
    rgb = to_rgb(img, png_significant_bits(data) if img.format == "PNG" else None)
    if rgb.size != out_size:
        rgb = rgb.resize(out_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=settings.quality, progressive=False, optimize=False)
    return PreparedImage(buf.getvalue(), oriented, passthrough=False)


def to_rgb(img: Image.Image, significant_bits: int | None = None) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparency is composited over white.  Greyscale of more than 8
    bits is scaled from its real depth: `significant_bits` where the file states it, else `sample_depth`."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, None)
        top = 2 ** (significant_bits or sample_depth(int(arr.max(initial=0)))) - 1
        arr = np.clip(arr * 255 // top, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def sample_depth(largest: int) -> int:
    """The bits greyscale samples use where the file does not say: the smallest of the depths sensors
    and scanners write (8, 10, 12, 14, 16) that holds the largest sample.  12-bit data in a 16-bit PNG
    scaled as 16-bit would be 16x too dark; clipped as 8-bit, white."""
    return next((bits for bits in SENSOR_DEPTHS if largest < 2 ** bits), max(16, largest.bit_length()))


def png_significant_bits(data: bytes) -> int | None:
    """A PNG's sBIT chunk (the sample depth of the original data, before it was stored in a wider one),
    the largest over its channels; None where it has none.  Pillow does not read it."""
    pos = 8  # after the signature; chunks are length, type, data, CRC
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"sBIT" and length:
            return max(data[pos + 8:pos + 8 + length]) or None
        if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
            return None
        pos += 12 + length
    return None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not worth rejecting the pixels for
        return 1
    return value if 1 <= value <= 8 else 1


def _is_passthrough_candidate(img, orientation, oriented, out_size) -> bool:
    return (
        img.format == "JPEG"
        and img.mode == "RGB"
        and not img.info.get("progressive")
        and not img.info.get("progression")
        and orientation == 1
        and oriented == out_size
    )


def _check_jpeg_data(data: bytes, img: Image.Image) -> bool:
    """Whether libjpeg-turbo's strict decode (at 1/8 scale: every coefficient is still read) took the
    whole JPEG without an error or a warning: then a full decode can only succeed, and a passthrough
    JPEG needs none.  A JPEG whose data ends before its last row, an EOI marker closing it or not (a cut
    download, a header claiming 9000x9000 over a few kB), decodes in libjpeg with grey rows and only a
    warning that Pillow drops: refused here.  The other warnings (extraneous bytes before a marker)
    leave whole images, which Pillow's decode then judges (False)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):  # CMYK: Pillow's decode alone
        return False
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY" if img.mode == "L" else "RGB", fastdct=True,
                               min_height=1, min_width=1, strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise ImageRejected("truncated_image", f"{img.size[0]}x{img.size[1]} JPEG: {exc}") from exc
        return False
    return True


def _decode(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        message = _message(exc)
        code = "truncated_image" if "truncated" in message or "broken data stream" in message else "corrupt_image"
        raise ImageRejected(code, message) from exc


def _describe(exc: Exception, data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "HTML/XML text saved under an image name"
    return f"{type(exc).__name__}: {_message(exc)}"


def _message(exc: Exception) -> str:
    """The exception's text without object reprs (`<_io.BytesIO object at 0x7f...>`): a reason must be
    the same on every run, or quarantine.jsonl would differ between identical runs."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
