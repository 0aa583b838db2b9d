"""What fine-tuning trains (`optim.trainable_from`, `optim.head_lr_mult`), for any `StagedNet`.

`trainable_from: STAGE` freezes every backbone stage below STAGE (one of the model's stage names, or
"head" for a linear probe): their parameters get no gradient and no optimiser state, and their batch-
norm layers stay in eval mode, so their running statistics are the pretrained ones.  Their dropout
keeps training, as in Caffe's fine-tuning (a frozen layer is one with a learning rate of 0): the layers
that retrain still see dropped-out inputs (the video transfer study's "top layer" is fed by fc7's).  Auxiliary heads
and the attribute head are new layers and always train.  `head_lr_mult` multiplies the learning rate
of the new layers: the classifier (the backbone's last linear layer, replaced when the class count
differs), the auxiliary heads and the attribute head.
"""

from __future__ import annotations

import torch.nn as nn

HEAD = "head"


def stage_choices(model: nn.Module) -> list[str]:
    backbone = getattr(model, "backbone", model)
    return [*backbone.stage_names, HEAD]


def frozen_modules(model: nn.Module, trainable_from: str | None) -> list[nn.Module]:
    """The backbone stages below `trainable_from` (none when it is None)."""
    if not trainable_from:
        return []
    choices = stage_choices(model)
    if trainable_from not in choices:
        raise ValueError(f"optim.trainable_from: {trainable_from!r} is not a stage of this model; stages: "
                         f"{', '.join(choices)}")
    backbone = getattr(model, "backbone", model)
    return [backbone.stages[name] for name in choices[:choices.index(trainable_from)]]


def freeze(model: nn.Module, trainable_from: str | None) -> int:
    """Turn off gradients below `trainable_from` (before DDP wraps the model); returns how many
    parameters were frozen."""
    frozen = 0
    for module in frozen_modules(model, trainable_from):
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def train_mode(model: nn.Module, trainable_from: str | None) -> None:
    """`model.train()`, with the frozen stages' batch norm in eval mode."""
    model.train()
    for module in frozen_modules(model, trainable_from):
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


def new_layer_parameters(model: nn.Module) -> set[int]:
    """ids of the classifier's, the auxiliary heads' and the attribute head's parameters (what
    `head_lr_mult` speeds up)."""
    backbone = getattr(model, "backbone", model)
    params = list(backbone.classifier()[1].parameters())
    if hasattr(model, "aux_heads"):
        params += list(model.aux_heads.parameters())
    if getattr(model, "attribute_head", None) is not None:
        params += list(model.attribute_head.parameters())
    return {id(p) for p in params}
