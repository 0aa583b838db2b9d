"""Name -> builder registry for every architecture; duplicate names are refused."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: `@register_model("vgg_d")` on a builder `(num_classes, **options) -> StagedNet`."""

    def add(builder: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered (by {_BUILDERS[name].__module__})")
        _BUILDERS[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_backbone(name: str, num_classes: int = 1000, **options) -> nn.Module:
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _BUILDERS[name](num_classes=num_classes, **options)
