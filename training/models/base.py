"""The one interface every architecture exposes, so relay heads and dense evaluation need no per-model code.

A `StagedNet` is an ordered list of named stages (each ends at a natural cut point: a pooling layer,
or a resolution change) followed by a head.  `forward_features` runs the stages, `forward_head` the
head; `run_stages(x, start, stop)` runs any contiguous slice, which is all relay back-propagation needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass(frozen=True)
class BranchSpec:
    """An auxiliary head after stage `after`: a `copy` of everything above it, or a `small` head."""

    after: str
    head: str = "copy"  # "copy" | "small"


@dataclass(frozen=True)
class AuxDefaults:
    """How a family trains by default (the paper's choice); `create_model` options override it."""

    mode: str = "bp"
    branches: tuple[BranchSpec, ...] = field(default_factory=tuple)


class StagedNet(nn.Module):
    def __init__(self, stages: list[tuple[str, nn.Module]], head: nn.Module, num_classes: int,
                 aux_defaults: AuxDefaults = AuxDefaults(), init: str = "he"):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.head = head
        self.num_classes = num_classes
        self.aux_defaults = aux_defaults
        self.init_scheme = init
        initialize(self, init)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def stage_index(self, name: str) -> int:
        if name not in self.stages:
            raise KeyError(f"{type(self).__name__} has no stage {name!r}; stages: {self.stage_names}")
        return self.stage_names.index(name)

    def run_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for stage in list(self.stages.values())[start:stop]:
            x = stage(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_stages(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def classifier(self) -> tuple[str, nn.Linear]:
        """(state name, layer) of the last linear layer: the one whose size is the class count."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Linear)][-1]

    def dense_head(self) -> nn.Module:
        """The head as convolutions: whole images of any size give a class-score map."""
        if not hasattr(self.head, "to_dense"):
            raise NotImplementedError(f"{type(self).__name__}'s head has no convolutional form")
        return self.head.to_dense()

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_head()(self.forward_features(x))


GAUSSIAN_STD = {"gaussian": 0.01,  # AlexNet and ZFNet: "standard deviation 0.01"
                "gaussian_vgg": 0.1}  # VGG's net A: "zero mean and 10^-2 variance", i.e. std 0.1
INIT_SCHEMES = ("he", "glorot", *GAUSSIAN_STD)


def initialize(module: nn.Module, scheme: str = "he") -> None:
    """He (Kaiming, fan-out, ReLU), Glorot (Xavier uniform) or a papers' fixed Gaussian for conv/linear
    weights, zero biases."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}: {' | '.join(INIT_SCHEMES)}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            if scheme == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_in" if isinstance(m, nn.Linear) else "fan_out",
                                        nonlinearity="relu")
            elif scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, GAUSSIAN_STD[scheme])
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
