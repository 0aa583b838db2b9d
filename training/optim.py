"""SGD as the papers used it, and the learning-rate schedules, behind one small interface."""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig
from training.models.freezing import new_layer_parameters


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters: weight decay on all of them, or (`decay_norm_and_bias` False)
    not on norm weights and biases; the new layers' rate times `head_lr_mult` (`training/freezing.py`)."""
    new = new_layer_parameters(model) if cfg.head_lr_mult != 1 else set()
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            decayed = cfg.decay_norm_and_bias or p.ndim > 1
            groups.setdefault((decayed, id(p) in new), []).append(p)
    if not groups:
        raise ValueError("no parameter to train: optim.trainable_from froze them all")
    return torch.optim.SGD([{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0,
                             "lr": cfg.lr * (cfg.head_lr_mult if is_new else 1.0)}
                            for (decayed, is_new), params in sorted(groups.items(), key=lambda g: (not g[0][0], g[0][1]))],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


class Schedule:
    """`step_batch()` after every optimiser step, `step_epoch(val_accuracy)` after every epoch.

    plateau: divide by 1/factor when validation accuracy stops improving for `patience` epochs
    (AlexNet, VGG); multistep: at the `milestones` epochs; cosine: per step to zero, after a linear
    warm-up of `warmup_epochs`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int):
        self.kind = cfg.schedule
        if self.kind == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.factor,
                                                                    patience=cfg.patience)
        elif self.kind == "multistep":
            self.inner = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), gamma=cfg.factor)
        elif self.kind == "cosine":
            warmup, total = cfg.warmup_epochs * steps_per_epoch, max(1, epochs * steps_per_epoch)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

            self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            raise ValueError(f"optim.schedule must be plateau, multistep or cosine, got {self.kind!r}")

    def step_batch(self) -> None:
        if self.kind == "cosine":
            self.inner.step()

    def step_epoch(self, val_accuracy: float) -> None:
        if self.kind == "plateau":
            self.inner.step(val_accuracy)
        elif self.kind == "multistep":
            self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def make_scheduler(optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> Schedule:
    return Schedule(optimizer, cfg, steps_per_epoch, epochs)


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `model`'s weights and buffers (None when `decay` is 0).

    After `update_parameters(model)`: ema = decay * ema + (1 - decay) * weights; the first update
    copies the weights.  Buffers (batch-norm statistics) are averaged too, so the average is
    directly usable for evaluation without re-estimating them."""
    if decay == 0:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"optim.ema_decay must be in [0, 1), got {decay}")
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)
