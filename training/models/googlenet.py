"""GoogLeNet / Inception v1 (Szegedy et al. 2015), the seed's per-layer table as data.

The two auxiliary classifiers (after inception 4a and 4d, loss weight 0.3, training only) are
declared as the family's default branches; the generic auxiliary-head mechanism in
`training/relay.py` builds and runs them, so nothing here is GoogLeNet-specific at train time.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.base import AuxDefaults, BranchSpec, StagedNet
from training.models.heads import PoolLinearHead
from training.models.registry import register_model
from training.models.vgg import lrn

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), from the paper's Table 1
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
# stage name -> inception modules in it; a 3x3/2 max-pool closes the stages marked True
STAGES = [("inception3", ["3a", "3b"], True), ("inception4a", ["4a"], False),
          ("inception4bcd", ["4b", "4c", "4d"], False), ("inception4e", ["4e"], True),
          ("inception5", ["5a", "5b"], False)]


def conv_relu(cin: int, cout: int, k: int, s: int = 1, p: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, cin: int, n1, r3, n3, r5, n5, pp):
        super().__init__()
        self.b1 = conv_relu(cin, n1, 1)
        self.b3 = nn.Sequential(conv_relu(cin, r3, 1), conv_relu(r3, n3, 3, p=1))
        self.b5 = nn.Sequential(conv_relu(cin, r5, 1), conv_relu(r5, n5, 5, p=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_relu(cin, pp, 1))
        self.out_channels = n1 + n3 + n5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class GoogLeNet(StagedNet):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.4, init: str = "glorot",
                 input_size: int = 224):  # input_size: any works (global average pooling)
        stem = nn.Sequential(conv_relu(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
                             conv_relu(64, 64, 1), conv_relu(64, 192, 3, 1, 1), lrn(),
                             nn.MaxPool2d(3, 2, ceil_mode=True))
        stages, cin = [("stem", stem)], 192
        for name, modules, pool in STAGES:
            layers = []
            for m in modules:
                block = Inception(cin, *INCEPTION[m])
                layers.append(block)
                cin = block.out_channels
            if pool:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            stages.append((name, nn.Sequential(*layers)))
        aux = AuxDefaults(mode="loss12_bp",
                          branches=(BranchSpec("inception4a", "small"), BranchSpec("inception4bcd", "small")))
        super().__init__(stages, PoolLinearHead(cin, num_classes, dropout), num_classes, aux_defaults=aux,
                         init=init)


register_model("googlenet")(lambda num_classes=1000, **options: GoogLeNet(num_classes, **options))
