"""ResNet 18/34/50/101/152 (He et al. 2016), the paper's plain 18/34 counterparts, and ResNeXt-50 32x4d.

Architectures as data: block type and blocks per stage.  `plain` nets are the same layers with the
shortcut removed (and so no projection convolutions), as in the paper's Figure 4 comparison.

Options for the paper's own variants: `shortcut_type="A"` (parameter-free shortcuts: identity, zero
channels padded and stride-2 subsampling where the shape changes; the paper's plain-vs-residual
comparison at 18/34 layers uses them, so both nets have the same parameters) against the default "B"
(1x1 projections where the shape changes); `bottleneck_stride="1x1"` (the original v1 bottleneck:
stride on the first 1x1) against the default "3x3" (torchvision's "v1.5").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.base import StagedNet
from training.models.heads import PoolLinearHead
from training.models.registry import register_model


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, shortcut: str | None, groups: int = 1,
                 base_width: int = 64, stride_on: str = "3x3"):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64 (ResNeXt needs Bottleneck)")
        out = width
        self.body = nn.Sequential(*conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), *conv_bn(width, out, 3))
        self.shortcut = _shortcut(cin, out, stride, shortcut) if shortcut else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.relu(y)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, shortcut: str | None, groups: int = 1,
                 base_width: int = 64, stride_on: str = "3x3"):
        super().__init__()
        inner = int(width * base_width / 64) * groups  # ResNeXt widens the grouped 3x3
        out = width * self.expansion
        first, middle = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.body = nn.Sequential(*conv_bn(cin, inner, 1, first), nn.ReLU(inplace=True),
                                  *conv_bn(inner, inner, 3, middle, groups), nn.ReLU(inplace=True),
                                  *conv_bn(inner, out, 1))
        self.shortcut = _shortcut(cin, out, stride, shortcut) if shortcut else None
        self.relu = nn.ReLU(inplace=True)

    forward = BasicBlock.forward


def _shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cout - cin, stride)
    return nn.Sequential(*conv_bn(cin, cout, 1, stride))  # projection (option B) where shapes change


class PadShortcut(nn.Module):
    """Option A: the input subsampled by `stride` and zero channels appended; no parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))


class ResNet(StagedNet):
    def __init__(self, block: type, layers: list[int], num_classes: int = 1000, shortcut: bool = True,
                 groups: int = 1, base_width: int = 64, zero_init_residual: bool = False,
                 init: str = "he", input_size: int = 224,  # input_size: any works (global pooling)
                 shortcut_type: str = "B", bottleneck_stride: str = "3x3"):
        if shortcut_type not in ("A", "B") or bottleneck_stride not in ("1x1", "3x3"):
            raise ValueError(f"shortcut_type must be A or B and bottleneck_stride 1x1 or 3x3, got "
                             f"{shortcut_type!r}, {bottleneck_stride!r}")
        kind = shortcut_type if shortcut else None
        stem = nn.Sequential(*conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [("stem", stem)], 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 1) else 1, kind, groups, base_width,
                                    bottleneck_stride))
                cin = width * block.expansion
            stages.append((f"layer{i}", nn.Sequential(*blocks)))
        super().__init__(stages, PoolLinearHead(cin, num_classes), num_classes, init=init)
        if zero_init_residual:  # each residual branch starts as zero: the block starts as identity
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.body[-1].weight)


SPECS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}), "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}), "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "plain18": (BasicBlock, [2, 2, 2, 2], {"shortcut": False}),
    "plain34": (BasicBlock, [3, 4, 6, 3], {"shortcut": False}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "base_width": 4}),
}


def _builder(block, layers, fixed):
    return lambda num_classes=1000, **options: ResNet(block, layers, num_classes, **{**fixed, **options})


for _name, (_block, _layers, _fixed) in SPECS.items():
    register_model(_name)(_builder(_block, _layers, _fixed))
