"""DenseNet (Huang et al. 2017): bottleneck 4k, compression 0.5.  DenseNet-121: growth rate 32, blocks
(6, 12, 24, 16); DenseNet-161: growth rate 48, blocks (6, 12, 36, 24), a 96-filter stem (the
CSAILVision Places365 release's densenet161)."""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.base import StagedNet
from training.models.heads import PoolLinearHead
from training.models.registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                                  nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True),
                                  nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNet(StagedNet):
    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, bn_size: int = 4, init_features: int = 64,
                 num_classes: int = 1000, init: str = "he", input_size: int = 224):  # any input size works
        stem = nn.Sequential(nn.Conv2d(3, init_features, 7, 2, 3, bias=False), nn.BatchNorm2d(init_features),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, c = [("stem", stem)], init_features
        for i, n in enumerate(blocks, 1):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i < len(blocks):
                layers.append(transition(c, c // 2))  # the transition's pooling closes the stage
                c //= 2
            else:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            stages.append((f"block{i}", nn.Sequential(*layers)))
        super().__init__(stages, PoolLinearHead(c, num_classes), num_classes, init=init)


register_model("densenet121")(lambda num_classes=1000, **options: DenseNet(num_classes=num_classes, **options))
register_model("densenet161")(lambda num_classes=1000, **options: DenseNet(
    (6, 12, 36, 24), growth=48, init_features=96, num_classes=num_classes, **options))
