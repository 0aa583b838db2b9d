"""Name -> builder registry for every architecture; duplicate names are refused.  An entry also says what
its network takes as input without building it: a video network's frame offsets (`clip_offsets`)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CLIP_OFFSETS: dict[str, Callable[..., tuple[int, ...]]] = {}


def register_model(name: str, clip_offsets: Callable[..., tuple[int, ...]] | None = None):
    """Decorator: `@register_model("vgg_d")` on a builder `(num_classes, **options) -> StagedNet`.  A video
    network's `clip_offsets(**options)` gives the frames it takes, as offsets from the clip's start."""

    def add(builder: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered (by {_BUILDERS[name].__module__})")
        _BUILDERS[name] = builder
        if clip_offsets is not None:
            _CLIP_OFFSETS[name] = clip_offsets
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_backbone(name: str, num_classes: int = 1000, **options) -> nn.Module:
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _BUILDERS[name](num_classes=num_classes, **options)


def clip_offsets(name: str, **options) -> tuple[int, ...] | None:
    """The frames the video network `name` takes with `options` (None for an image network): read from
    its entry, without building it."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    offsets = _CLIP_OFFSETS.get(name)
    return offsets(**options) if offsets else None
