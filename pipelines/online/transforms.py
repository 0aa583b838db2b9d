"""The papers' augmentation and testing protocols, on decoded images.

Train (`TrainTransform`): random-resized crop (timm/Inception style, `rrc_box`),
`scale_jitter` (VGG: shorter side S ~ U[Smin, Smax], random crop), `random_crop` (AlexNet: a random
224 crop of the 256 image); then horizontal flip, AlexNet's PCA colour noise, mean/std normalisation.
Eval (one image -> a stack of views): `center` (resize + center crop), `ten_crop` (4 corners + center,
and their flips), `full` (the whole image at scale Q, for dense evaluation), `multi_view` (WM: several
scales x the ten crops).

Train crops run on uint8 tensors in the data workers (decode, one antialiased resize of the crop
box, flip); float conversion, colour noise and normalisation run batched on the training device
(`BatchNormalize`).  Decoding uses Pillow's reduced-size JPEG decoding (`draft`) when the output is
at most half the stored size.  `TrainTransform.plan` draws the same crop without decoding, for the GPU
path (`device_decode`: nvJPEG through `torchvision.io.decode_jpeg`).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_PROTOCOLS = ("center", "ten_crop", "full", "multi_view", "multi_crop", "googlenet_144")


def decode(jpeg: bytes, min_side: int | None = None) -> Image.Image:
    """RGB image; with `min_side`, decoded at the smallest DCT scale whose shorter side stays >= it."""
    img = Image.open(io.BytesIO(jpeg))
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / min_side
        if scale >= 2:
            img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
    return img if img.mode == "RGB" else img.convert("RGB")


def reduced_scale(w: int, h: int, min_side: int | None) -> int:
    """The DCT scale (1, 2, 4 or 8) `decode(jpeg, min_side)` decodes a w x h JPEG at: Pillow's `draft`
    rule for the size `decode` asks for (the decoded image is ceil(w / scale) x ceil(h / scale))."""
    if not min_side or min(w, h) < 2 * min_side:
        return 1
    scale = min(w, h) / min_side
    fits = min(w // math.ceil(w / scale), h // math.ceil(h / scale))
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def to_uint8(img: Image.Image) -> torch.Tensor:
    """uint8 CHW: what workers ship (a quarter of float32's bytes); `BatchNormalize` finishes on the device."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(w, h) from a JPEG's SOF marker without decoding; None if `data` is not a parseable JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def decode_uint8(jpeg: bytes, min_side: int | None = None) -> torch.Tensor:
    """uint8 CHW RGB.  Pillow's reduced-DCT decode when the image is at least twice `min_side`,
    else libjpeg-turbo through torchvision (faster than Pillow at full size); Pillow for non-JPEGs."""
    size = jpeg_size(jpeg)
    if size is not None and not (min_side and min(size) >= 2 * min_side):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # e.g. CMYK or arithmetic coding: Pillow handles what libjpeg-turbo's API will not
            pass
    return to_uint8(decode(jpeg, min_side))


def resize_box(x: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop `box` (x0, y0, x1, y1) of a uint8 CHW tensor and resize it to `size` (h, w), bilinear, antialiased."""
    x0, y0, x1, y1 = box
    region = x[None, :, y0:y1, x0:x1]
    if region.shape[-2:] == size:
        return region[0]
    # PyTorch's vectorised uint8 antialiased kernel wants channels-last input: 1.9x faster than a
    # strided view, same bytes
    region = region.contiguous(memory_format=torch.channels_last)
    return F.interpolate(region, size=size, mode="bilinear", antialias=True)[0]


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == side:
        return img
    if w <= h:
        return img.resize((side, max(1, round(h * side / w))), Image.Resampling.BILINEAR)
    return img.resize((max(1, round(w * side / h)), side), Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class ColorPCA:
    """AlexNet's colour noise: add sum_i alpha_i * s_i * v_i to every pixel, alpha_i ~ N(0, std).

    lambda_i, v_i: eigenvalues/eigenvectors of the RGB covariance of training pixels in [0, 1]
    (`pipelines/color_pca.py`).  `scale` "eigenvalue" takes s_i = lambda_i, the paper's formula, on [0, 1]
    pixels as fb.resnet.torch applies it (the paper does not say in which units, and lambda grows with
    the square of the unit: of 0-255 pixels the same formula shifts by hundreds of grey levels);
    "spread" takes s_i = sqrt(lambda_i), the component's standard deviation, a tenth of which is the
    same shift in any units.
    """

    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]  # rows: eigenvectors
    std: float = 0.1
    scale: str = "eigenvalue"  # eigenvalue | spread

    def __post_init__(self):
        if self.scale not in ("eigenvalue", "spread"):
            raise ValueError(f"scale must be eigenvalue or spread, got {self.scale!r}")

    def draw(self, rng: random.Random) -> list[float]:
        return [rng.gauss(0.0, self.std) for _ in range(3)]

    def shift(self, alphas: torch.Tensor) -> torch.Tensor:
        """(N, 3) alphas -> (N, 3) RGB shifts in [0, 1] units."""
        vecs = torch.tensor(self.eigenvectors, device=alphas.device)  # (3 vectors, 3 channels)
        scale = torch.tensor(self.eigenvalues, device=alphas.device).clamp(min=0)
        return (alphas * (scale if self.scale == "eigenvalue" else scale.sqrt())) @ vecs


@dataclass(frozen=True)
class TrainTransform:
    """crop: "rrc" (random resized crop), "scale_jitter" (VGG), "random_crop" (AlexNet)."""

    crop: str = "rrc"
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[int, int] = (256, 512)
    flip: bool = True
    pca: ColorPCA | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.crop not in ("rrc", "scale_jitter", "random_crop"):
            raise ValueError(f"crop must be rrc | scale_jitter | random_crop, got {self.crop!r}")

    def __call__(self, jpeg: bytes, rng: random.Random) -> tuple[torch.Tensor, list[float]]:
        """(uint8 CHW crop, PCA alphas or []): the per-sample, random part; `batch_normalizer` does the rest.

        Every crop is one resize of just the cropped box, on uint8 tensors (3x faster than Pillow's).
        """
        side = rng.randint(*self.jitter) if self.crop == "scale_jitter" else None
        x = decode_uint8(jpeg, self._decode_side(side))
        out = resize_box(x, self.box(x.shape[2], x.shape[1], side, rng), (self.size, self.size))
        if self.flip and rng.random() < 0.5:
            out = out.flip(-1)
        return out, self._alphas(rng)

    def plan(self, jpeg: bytes, rng: random.Random) -> list[float] | None:
        """The same random part without decoding, for a decode on the device (`device_decode`):
        [x0, y0, x1, y1, flip, *PCA alphas], the box in the stored image's pixels.  The draws are
        `__call__`'s, in its order and over the image it would decode (a reduced-DCT decode's box is
        scaled back up), so both give the same crop.  None, drawing nothing, when the header gives no
        size (not a JPEG): then `__call__` decodes it on the CPU."""
        size = jpeg_size(jpeg)
        if size is None:
            return None
        w, h = size
        side = rng.randint(*self.jitter) if self.crop == "scale_jitter" else None
        f = reduced_scale(w, h, self._decode_side(side))
        x0, y0, x1, y1 = self.box(-(-w // f), -(-h // f), side, rng)
        flip = self.flip and rng.random() < 0.5
        return [x0 * f, y0 * f, min(x1 * f, w), min(y1 * f, h), float(flip), *self._alphas(rng)]

    def box(self, w: int, h: int, side: int | None, rng: random.Random) -> tuple[int, int, int, int]:
        """The crop box in a decoded w x h image (`side`: scale_jitter's drawn shorter side)."""
        s = self.size
        if self.crop == "rrc":
            return rrc_box(w, h, self.scale, self.ratio, rng)
        if self.crop == "scale_jitter":  # shorter side -> S, then a random s x s crop = an s/scale box
            extent = min(min(w, h), max(1, round(s * min(w, h) / side)))
        else:  # AlexNet: a random s x s crop of the stored (256) image
            extent = min(s, w, h)
        x0, y0 = rng.randint(0, w - extent), rng.randint(0, h - extent)
        return x0, y0, x0 + extent, y0 + extent

    def _decode_side(self, side: int | None) -> int | None:
        """The shorter side the crop needs the decode to keep (a smaller reduced-DCT decode is wasted)."""
        return {"rrc": None, "scale_jitter": side, "random_crop": self.size}[self.crop]

    def _alphas(self, rng: random.Random) -> list[float]:
        return self.pca.draw(rng) if self.pca is not None else []

    def sample(self, members: dict[str, bytes], rng: random.Random) -> tuple[torch.Tensor, list[float]]:
        """The same, from a stored sample's members (the loaders' one call for images and clips alike)."""
        return self(members["jpg"], rng)

    def batch_normalizer(self) -> "BatchNormalize":
        return BatchNormalize(self.mean, self.std, self.pca)


class BatchNormalize:
    """uint8 (N, 3, H, W) batch, or clips (N, 3, T, H, W) -> float, PCA colour noise, mean/std: one
    pass, on the training device."""

    def __init__(self, mean, std, pca: ColorPCA | None = None):
        self.mean, self.std, self.pca = mean, std, pca

    def __call__(self, images: torch.Tensor, alphas: torch.Tensor | None = None) -> torch.Tensor:
        # (x/255 + shift - mean) / std  ==  x * scale + bias, bias per image when there is colour noise
        channels = (1, 3) + (1,) * (images.dim() - 2)
        std = torch.tensor(self.std, device=images.device).view(channels)
        scale = 1 / (255 * std)
        bias = -torch.tensor(self.mean, device=images.device).view(channels) / std
        if self.pca is not None and alphas is not None and alphas.numel():
            bias = bias + self.pca.shift(alphas.to(images.device, torch.float32)).view(-1, *channels[1:]) / std
        return images.float().mul_(scale).add_(bias)


def rrc_box(w: int, h: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision/timm RandomResizedCrop's box: area fraction in `scale`, aspect log-uniform in `ratio`."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x0, y0, x0 + cw, y0 + ch
    side = min(w, h)  # fallback: center crop of the whole image, as torchvision does
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


@dataclass(frozen=True)
class EvalTransform:
    """protocol: center | ten_crop | full | multi_view | multi_crop (VGG: a 5x5 grid of crops and their
    mirrors at each scale, 50 per scale) | googlenet_144 (4 scales x 3 squares x 6 crops x 2 mirrors).
    `views(jpeg)`: uint8 (V, C, H, W), what data workers ship; `normalizer()` finishes them on the device; calling it does both: float (V, C, H, W)."""

    protocol: str = "center"
    size: int = 224
    resize: int = 256
    scales: tuple[int, ...] = (256,)  # full: shorter side Q; multi_view: shorter sides
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.protocol not in EVAL_PROTOCOLS:
            raise ValueError(f"protocol must be one of {EVAL_PROTOCOLS}, got {self.protocol!r}")

    def __call__(self, jpeg: bytes) -> torch.Tensor:
        return self.normalizer()(self.views(jpeg))

    def normalizer(self) -> "BatchNormalize":
        return BatchNormalize(self.mean, self.std)

    def sample_views(self, members: dict[str, bytes]) -> torch.Tensor:
        return self.views(members["jpg"])

    def views(self, jpeg: bytes) -> torch.Tensor:
        if self.protocol == "center":
            img = resize_shorter(decode(jpeg, self.resize), self.resize)
            views = [center_crop(img, self.size)]
        elif self.protocol == "ten_crop":
            views = ten_crop(resize_shorter(decode(jpeg, self.resize), self.resize), self.size)
        elif self.protocol == "full":
            img = decode(jpeg, self.scales[0])
            views = [resize_shorter(img, self.scales[0])]
        elif self.protocol == "multi_view":
            img = decode(jpeg, min(self.scales))
            views = [v for q in self.scales for v in ten_crop(resize_shorter(img, q), self.size)]
        else:
            img = decode(jpeg, max(self.scales))
            crops = grid_crops if self.protocol == "multi_crop" else googlenet_crops
            views = [v for q in self.scales for v in crops(resize_shorter(img, q), self.size)]
        return torch.stack([to_uint8(v) for v in views])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    x0, y0 = (w - size) // 2, (h - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def ten_crop(img: Image.Image, size: int) -> list[Image.Image]:
    w, h = img.size
    boxes = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), ((w - size) // 2, (h - size) // 2)]
    crops = [img.crop((x, y, x + size, y + size)) for x, y in boxes]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def grid_crops(img: Image.Image, size: int, grid: int = 5) -> list[Image.Image]:
    """VGG's multi-crop: a regular grid x grid of crops spanning the image, and their mirrors."""
    w, h = img.size
    xs = [round(i * (w - size) / (grid - 1)) for i in range(grid)]
    ys = [round(i * (h - size) / (grid - 1)) for i in range(grid)]
    crops = [img.crop((x, y, x + size, y + size)) for y in ys for x in xs]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def googlenet_crops(img: Image.Image, size: int) -> list[Image.Image]:
    """GoogLeNet's test crops at one scale: the left, center and right squares (top, center, bottom for a
    portrait image); of each, the 4 corners and the center `size` crop and the square resized to `size`;
    and their mirrors: 36."""
    w, h = img.size
    side = min(w, h)
    starts = (0, (max(w, h) - side) // 2, max(w, h) - side)
    squares = [img.crop((a, 0, a + side, side) if w >= h else (0, a, side, a + side)) for a in starts]
    crops = []
    for square in squares:
        five = ten_crop(square, size)[:5]
        crops += five + [square.resize((size, size), Image.Resampling.BILINEAR)]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
