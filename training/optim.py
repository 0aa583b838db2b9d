"""SGD as the papers used it, and the learning-rate schedules, behind one small interface."""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if (not cfg.decay_norm_and_bias and p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


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
