"""Networks by name, `create_model(name, ...)`, and the one a training config describes: `build_model(cfg)` (its stages below `optim.trainable_from`
frozen) and what it takes as input, `clip_offsets_for(cfg)`, read from the registry without building it.
Starting from saved weights (`model.init_from`, `model.pretrained`) is `training/pretrained.py`'s."""

from __future__ import annotations

from training.models.freezing import freeze
from training.models.registry import build_backbone, clip_offsets
from training.models.relay import RelayNet, wrap


def create_model(name: str, num_classes: int = 1000, *, mode: str | None = None,
                 branch: str | list[str] | None = None, aux_head: str | None = None,
                 aux_weight: float | None = None, overlap: int = 1, label_smoothing: float = 0.0,
                 num_attributes: int = 0, attribute_weight: float = 1.0, scene_weight: float = 1.0,
                 **options) -> RelayNet:
    """The backbone `name` (`options` go to its family's builder) wrapped for its relay `mode`."""
    return wrap(build_backbone(name, num_classes, **options), mode=mode, branch=branch, aux_head=aux_head,
                aux_weight=aux_weight, overlap=overlap, label_smoothing=label_smoothing,
                num_attributes=num_attributes, attribute_weight=attribute_weight, scene_weight=scene_weight)


def build_model(cfg) -> RelayNet:
    """The configured model (`cfg`: a `TrainConfig`), freshly initialised."""
    m = cfg.model
    model = create_model(m.name, m.num_classes, mode=m.mode, branch=m.branch, aux_head=m.aux_head,
                         aux_weight=m.aux_weight, overlap=m.overlap, label_smoothing=cfg.optim.label_smoothing,
                         num_attributes=m.num_attributes, attribute_weight=m.attribute_weight,
                         scene_weight=m.scene_weight, **m.options)
    freeze(model, cfg.optim.trainable_from)
    return model


def clip_offsets_for(cfg) -> tuple[int, ...] | None:
    """The frames of a clip the configured video network takes (None for an image network)."""
    return clip_offsets(cfg.model.name, **cfg.model.options)
