"""WM models A and B (Shen, Lin & Huang; Places2 2015 winners), as in the seed's table.

Model A (22 weight layers): [3x3,64]x2 | [3x3,128]x2 | [3x3,256]x5 | [3x3,512]x5 | branch | [3x3,512]x5,
SPP {7,3,2,1}, fc4096, fc4096, fc.  Model B: 7x7/2 conv 128 and a pool, then stages of 4 modules
[1x1, c; 3x3, c; double 3x3, 2c] (concatenated: 4c out) at 56, 28 and 14.  A 2x2/2 max-pool closes
each stage below 14x14.  The released Places2 model B has no batch-norm; `batch_norm=True` adds it.
`width` scales every convolution and `fc` the hidden FC size, for slim CPU versions.
The relay branch defaults to the seed's: after the 28x28 stage, a copy of everything above it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.base import AuxDefaults, BranchSpec, StagedNet
from training.models.heads import SPPHead
from training.models.registry import register_model

MODEL_A = [("s224", 64, 2), ("s112", 128, 2), ("s56", 256, 5), ("s28", 512, 5), ("s14", 512, 5)]
MODEL_B = [("s56", 64, 4), ("s28", 128, 4), ("s14", 128, 4)]  # (stage, c, modules): module out = 4c
RELAY = AuxDefaults(mode="relay", branches=(BranchSpec("s28", "copy"),))


def conv(cin: int, cout: int, k: int, batch_norm: bool, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True)]


def _scaled(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class WMModelA(StagedNet):
    """`convs`: convolutions per stage (the paper's 2, 2, 5, 5, 5): the depth a tuning run varies."""

    def __init__(self, num_classes: int = 401, width: float = 1.0, fc: int = 4096, batch_norm: bool = False,
                 dropout: float = 0.5, init: str = "he", input_size: int = 224,  # SPP takes any size
                 convs: tuple[int, ...] | None = None):
        counts = tuple(convs) if convs is not None else tuple(n for _, _, n in MODEL_A)
        if len(counts) != len(MODEL_A) or min(counts) < 1:
            raise ValueError(f"wm_model_a: convs must be {len(MODEL_A)} counts >= 1 (one per stage), got {convs}")
        stages, cin = [], 3
        for i, ((name, c, _), n) in enumerate(zip(MODEL_A, counts)):
            c = _scaled(c, width)
            layers = [layer for j in range(n) for layer in conv(cin if j == 0 else c, c, 3, batch_norm)]
            if i < len(MODEL_A) - 1:
                layers.append(nn.MaxPool2d(2, 2))
            stages.append((name, nn.Sequential(*layers)))
            cin = c
        super().__init__(stages, SPPHead(cin, num_classes, hidden=(fc, fc), dropout=dropout), num_classes,
                         aux_defaults=RELAY, init=init)


class ModuleB(nn.Module):
    """[1x1, c; 3x3, c; double 3x3, 2c] side by side, concatenated to 4c channels."""

    def __init__(self, cin: int, c: int, batch_norm: bool):
        super().__init__()
        self.b1 = nn.Sequential(*conv(cin, c, 1, batch_norm))
        self.b3 = nn.Sequential(*conv(cin, c, 3, batch_norm))
        self.b33 = nn.Sequential(*conv(cin, 2 * c, 3, batch_norm), *conv(2 * c, 2 * c, 3, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b33(x)], 1)


class WMModelB(StagedNet):
    def __init__(self, num_classes: int = 401, width: float = 1.0, fc: int = 4096, batch_norm: bool = False,
                 dropout: float = 0.5, init: str = "he", input_size: int = 224):  # SPP takes any size
        c0 = _scaled(128, width)
        stages = [("conv1", nn.Sequential(*conv(3, c0, 7, batch_norm, stride=2), nn.MaxPool2d(2, 2)))]
        cin = c0
        for i, (name, c, n) in enumerate(MODEL_B):
            c = _scaled(c, width)
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(ModuleB(cin, c, batch_norm))
                cin = 4 * c
            if i < len(MODEL_B) - 1:
                layers.append(nn.MaxPool2d(2, 2))
            stages.append((name, nn.Sequential(*layers)))
        super().__init__(stages, SPPHead(cin, num_classes, hidden=(fc, fc), dropout=dropout), num_classes,
                         aux_defaults=RELAY, init=init)


register_model("wm_model_a")(lambda num_classes=401, **options: WMModelA(num_classes, **options))
register_model("wm_model_b")(lambda num_classes=401, **options: WMModelB(num_classes, **options))
