"""Classifier heads, each with an exact convolutional twin for dense (whole-image) evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class FCHead(nn.Module):
    """flatten -> [fc, ReLU, dropout] x len(hidden) -> fc (the papers': dropout on fc6's and fc7's
    outputs), or with `dropout_first` [dropout, fc, ReLU] x len(hidden) -> fc (torchvision's AlexNet:
    dropout on their inputs).  `in_shape` = (C, H, W) of the last feature map."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: tuple[int, ...], num_classes: int,
                 dropout: float = 0.5, dropout_first: bool = False):
        super().__init__()
        self.in_shape = in_shape
        dims = [in_shape[0] * in_shape[1] * in_shape[2], *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            block = [nn.Linear(a, b), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout), *block] if dropout_first else [*block, nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))

    def to_dense(self) -> nn.Module:
        """fc6 -> HxW convolution, the rest -> 1x1 convolutions (VGG's dense evaluation)."""
        c, h, w = self.in_shape
        convs: list[nn.Module] = []
        first = True
        for layer in self.fc:
            if isinstance(layer, nn.Linear):
                kernel = (h, w) if first else (1, 1)
                # A Linear over (C, H, W)-flattened input is a convolution with the same weights.
                conv = nn.Conv2d(layer.in_features // (kernel[0] * kernel[1]), layer.out_features, kernel,
                                 device=layer.weight.device, dtype=layer.weight.dtype)
                conv.weight.data.copy_(layer.weight.data.view(conv.weight.shape))
                conv.bias.data.copy_(layer.bias.data)
                convs.append(conv)
                first = False
            elif isinstance(layer, nn.ReLU):
                convs.append(nn.ReLU(inplace=True))
        return nn.Sequential(*convs).eval()


def spp_bins(size: int, n: int) -> list[tuple[int, int]]:
    """(start, length) of the n bins along one axis.

    Where kernel = stride = ceil(size / n) gives exactly n bins (the released WM model's rule on its
    14x14 map: 7x7, 3x3, 2x2, 1x1 bins with kernels 2, 5, 7, 14), use it; otherwise adaptive bins.
    """
    k = math.ceil(size / n)
    if (n - 1) * k < size:
        return [(i * k, min(k, size - i * k)) for i in range(n)]
    return [(i * size // n, math.ceil((i + 1) * size / n) - i * size // n) for i in range(n)]


class SPPHead(nn.Module):
    """Spatial pyramid max-pooling {7,3,2,1} -> fc4096 -> fc4096 -> fc (WM models A and B)."""

    def __init__(self, channels: int, num_classes: int, levels=(7, 3, 2, 1), hidden=(4096, 4096),
                 dropout: float = 0.5, window: int = 14):
        super().__init__()
        self.channels, self.levels, self.window = channels, tuple(levels), window
        self.fc = FCHead((channels * sum(n * n for n in levels), 1, 1), tuple(hidden), num_classes, dropout)

    @property
    def features(self) -> int:
        return self.channels * sum(n * n for n in self.levels)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for n in self.levels:
            h, w = x.shape[-2:]
            rows, cols = spp_bins(h, n), spp_bins(w, n)
            if _uniform(rows, h) and _uniform(cols, w):
                pooled = F.max_pool2d(x, (rows[0][1], cols[0][1]), ceil_mode=True)
            else:
                pooled = F.adaptive_max_pool2d(x, n)
            parts.append(torch.flatten(pooled, 1))
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).view(x.shape[0], -1, 1, 1))

    def to_dense(self) -> nn.Module:
        return DenseSPP(self)


class DenseSPP(nn.Module):
    """Slide the `window` x `window` SPP + FC head over a larger map, one output per window position.

    Every bin of every level is a max over a fixed (rows, cols) box of the window; a stride-1 max-pool
    of that box size, read at the bin's offset, gives that bin for every window position at once.
    Stacked in the SPP's flatten order, the FC layers apply as 1x1 convolutions.  At a map of exactly
    `window` x `window` (224 input) the output equals the SPP head's.
    """

    def __init__(self, head: SPPHead):
        super().__init__()
        self.levels, self.window = head.levels, head.window
        self.fc = head.fc.to_dense()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.window:
            raise ValueError(f"dense SPP needs a feature map of at least {self.window}x{self.window}, got {h}x{w}")
        out_h, out_w = h - self.window + 1, w - self.window + 1
        pooled_cache: dict[tuple[int, int], torch.Tensor] = {}
        parts = []
        for n in self.levels:
            bins = spp_bins(self.window, n)
            cells = []
            for r0, rh in bins:
                for c0, cw in bins:
                    if (rh, cw) not in pooled_cache:
                        pooled_cache[(rh, cw)] = F.max_pool2d(x, (rh, cw), stride=1)
                    cells.append(pooled_cache[(rh, cw)][..., r0:r0 + out_h, c0:c0 + out_w])
            # (N, C, n*n, H', W') -> (N, C*n*n, H', W'): channel-major, as SPPHead flattens (N, C, n, n)
            parts.append(torch.stack(cells, 2).flatten(1, 2))
        return self.fc(torch.cat(parts, 1))


def _uniform(bins: list[tuple[int, int]], size: int) -> bool:
    k = bins[0][1]
    return all(start == i * k for i, (start, _) in enumerate(bins)) and bins[-1][0] + bins[-1][1] == size


class SmallAuxHead(nn.Module):
    """GoogLeNet's auxiliary classifier: 5x5/3 average pooling (4x4 out of the 14x14 map of a 224 input),
    1x1 conv 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv = nn.Sequential(nn.Conv2d(channels, 128, 1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(128 * 16, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x) if min(x.shape[-2:]) >= 5 else x
        if pooled.shape[-2:] != (4, 4):  # other input sizes than the paper's: 4x4 all the same, for the fc
            pooled = F.adaptive_avg_pool2d(pooled, 4)
        return self.fc(torch.flatten(self.conv(pooled), 1))


class PoolLinearHead(nn.Module):
    """Global average pool -> dropout -> fc (ResNet, GoogLeNet, DenseNet)."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))
