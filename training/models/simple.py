"""`simple_net`: a small from-scratch network for CPU demos (the course project's "simple network", in
RGB): three conv/BN/ReLU/pool stages, then pool + fc.  `batch_norm: false` and `dropout: 0` give the
course's part 1 network; the defaults (batch-norm, dropout) are its part 2 modifications."""

from __future__ import annotations

import torch.nn as nn

from training.models.base import StagedNet
from training.models.heads import PoolLinearHead
from training.models.registry import register_model

STAGES = [("block1", 32, 5), ("block2", 64, 3), ("block3", 128, 3)]  # (name, channels, kernel)


class SimpleNet(StagedNet):
    """`convs`: conv/BN/ReLU layers per stage (default one each): the depth the demo tuning space varies."""

    def __init__(self, num_classes: int = 15, width: float = 1.0, dropout: float = 0.3, init: str = "he",
                 input_size: int = 64,  # any input size works (global pooling)
                 convs: tuple[int, ...] = (1, 1, 1), batch_norm: bool = True):
        if len(convs) != len(STAGES) or min(convs) < 1:
            raise ValueError(f"simple_net: convs must be {len(STAGES)} counts >= 1 (one per stage), got {convs}")
        stages, cin = [], 3
        for (name, c, k), n in zip(STAGES, convs):
            c = max(4, int(c * width))
            layers: list[nn.Module] = []
            for j in range(n):
                layers += [nn.Conv2d(cin if j == 0 else c, c, k, padding=k // 2, bias=not batch_norm),
                           *([nn.BatchNorm2d(c)] if batch_norm else []), nn.ReLU(inplace=True)]
            stages.append((name, nn.Sequential(*layers, nn.MaxPool2d(2, 2))))
            cin = c
        super().__init__(stages, PoolLinearHead(cin, num_classes, dropout), num_classes, init=init)


register_model("simple_net")(lambda num_classes=15, **options: SimpleNet(num_classes, **options))
