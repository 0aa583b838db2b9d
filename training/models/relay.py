"""Auxiliary heads and relay back-propagation, for any `StagedNet`, with no per-model code.

Modes, named as in the WM seed's table:
- ``bp``: the top loss only; no auxiliary head is built.
- ``loss12_bp``: deep supervision (GoogLeNet): every loss reaches every layer below its head.
- ``relay``: loss2 (the auxiliary head at the branch) trains its head and everything below the
  branch; loss1 (the top) trains everything above the branch plus `overlap` stages below it, and
  nothing lower.

Relay is one forward and one backward of ``loss1 + w * loss2``.  The result is that of running
the overlap stages twice with shared weights, once on the detached trunk output (loss1's path, so
its gradient stops there) and once attached (loss2's path); `_OverlapRelay` gets it running them
once.  Every parameter gets a gradient, so DDP needs no unused-parameter search.
At eval time only the top output is computed; `export()` gives the backbone without any aux head.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.attribute_head import AttributeHead, attribute_loss
from training.models.base import BranchSpec, StagedNet, initialize
from training.models.heads import SmallAuxHead

MODES = ("bp", "loss12_bp", "relay")
AUX_HEADS = ("copy", "small")  # the layers above the branch duplicated (WM A/B), or GoogLeNet's small head
DEFAULT_AUX_WEIGHT = {"bp": 0.0, "loss12_bp": 0.3, "relay": 1.0}  # GoogLeNet's 0.3; relay: the seed's 1:1


class AuxOutputs(NamedTuple):
    """What a training forward returns: the top logits, one entry per auxiliary head, and the top feature
    map the logits came from (what the attribute head reads)."""

    logits: torch.Tensor
    aux_logits: tuple[torch.Tensor, ...]
    features: torch.Tensor | None = None


class RelayNet(nn.Module):
    def __init__(self, backbone: StagedNet, mode: str, branches: list[BranchSpec], aux_weight: float,
                 overlap: int = 1, label_smoothing: float = 0.0, num_attributes: int = 0,
                 attribute_weight: float = 1.0, scene_weight: float = 1.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "relay" and len(branches) != 1:
            raise ValueError(f"relay needs exactly one branch, got {len(branches)}")
        if overlap < 0:
            raise ValueError("overlap must be >= 0 stages")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        # Checked in every mode, bp included, so a misspelt branch or head fails here rather than in the
        # relay trial of a search that also tries bp.
        last = len(backbone.stage_names) - 1
        for b in branches:
            if backbone.stage_index(b.after) >= last:
                raise ValueError(f"a branch must sit below the last stage ({backbone.stage_names[-1]!r})")
            if b.head not in AUX_HEADS:
                raise ValueError(f"aux head must be one of {', '.join(AUX_HEADS)}, got {b.head!r}")
        self.backbone, self.mode, self.aux_weight, self.overlap = backbone, mode, float(aux_weight), overlap
        self.label_smoothing = label_smoothing
        self.branches = [] if mode == "bp" else list(branches)
        self.branch_index = [backbone.stage_index(b.after) for b in self.branches]
        self.aux_heads = nn.ModuleList(self._make_head(b, i) for b, i in zip(self.branches, self.branch_index))
        if num_attributes < 0 or attribute_weight < 0 or scene_weight < 0:
            raise ValueError("num_attributes, attribute_weight and scene_weight must be >= 0")
        self.num_attributes, self.attribute_weight, self.scene_weight = num_attributes, attribute_weight, scene_weight
        # (the probe at 224: every family's stages keep a map that large above 1x1)
        self.attribute_head = (AttributeHead(self._channels_after(len(backbone.stage_names) - 1, 224), num_attributes)
                               if num_attributes else None)

    # -- the StagedNet interface, forwarded -------------------------------------------------------
    @property
    def stages(self) -> nn.ModuleDict:
        return self.backbone.stages

    def forward_features(self, x):
        return self.backbone.forward_features(x)

    def forward_head(self, x):
        return self.backbone.forward_head(x)

    def export(self) -> StagedNet:
        """The deployable network: the backbone alone (its state_dict has no auxiliary keys)."""
        return self.backbone

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Logits at eval; `AuxOutputs` in training; with labels `y`, the dict of named losses.

        Taking `y` here (not in a separate method) lets the train loop call the DDP wrapper itself,
        `ddp_model(x, y)`, which is what arms DDP's gradient all-reduce.
        """
        if y is not None:
            return self._losses(x, y)
        if not self.training:
            return self.backbone(x)
        if self.mode == "bp":
            return self._forward_top(x)
        if self.mode == "loss12_bp":
            return self._forward_deep_supervision(x)
        return self._forward_relay(x)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scene logits, attribute logits or None), from one pass through the backbone."""
        logits, _, features = self._forward_top(x)
        return logits, self.attribute_head(features) if self.attribute_head is not None else None

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": total to back-propagate, "loss1": top, "loss2"...: auxiliary, "logits": top}``, and
        with attributes ``"loss_attr"`` and ``"attr_logits"``.  `y`: class ids, or one row per sample:
        with attributes [class id, 0/1 (or MISSING) per attribute]; in a multi-label split [class id,
        0/1 per class], the softmax's target then being the sample's classes in equal shares."""
        labels, attributes = (y[:, 0], y[:, 1:]) if y.dim() == 2 else (y, None)
        if attributes is not None and self.attribute_head is None:
            labels, attributes = self._shares(attributes), None
        logits, aux, features = self(x) if self.training else self._forward_top(x)  # eval: no auxiliary loss
        smoothing = self.label_smoothing
        result = {"loss1": F.cross_entropy(logits, labels, label_smoothing=smoothing)}
        scene = result["loss1"]
        for k, a in enumerate(aux, start=2):
            result[f"loss{k}"] = F.cross_entropy(a, labels, label_smoothing=smoothing)
            scene = scene + self.aux_weight * result[f"loss{k}"]
        total = self.scene_weight * scene
        if self.attribute_head is not None:
            if attributes is None or attributes.shape[1] != self.num_attributes:
                raise ValueError(f"the model has {self.num_attributes} attributes; the batch's targets "
                                 f"have {0 if attributes is None else attributes.shape[1]}")
            result["attr_logits"] = self.attribute_head(features)
            result["loss_attr"] = attribute_loss(result["attr_logits"], attributes)
            total = total + self.attribute_weight * result["loss_attr"]
        result["loss"] = total
        result["logits"] = logits
        return result

    def _shares(self, multi_hot: torch.Tensor) -> torch.Tensor:
        """A multi-label row's target distribution: 1/n on each of its n classes."""
        if multi_hot.shape[1] != self.backbone.num_classes:
            raise ValueError(f"the batch's label rows have {multi_hot.shape[1]} columns after the class id: "
                             f"neither the model's {self.backbone.num_classes} classes nor its "
                             f"{self.num_attributes} attributes")
        shares = multi_hot.float()
        return shares / shares.sum(1, keepdim=True).clamp(min=1)

    def _forward_top(self, x):
        features = self.backbone.forward_features(x)
        return AuxOutputs(self.backbone.forward_head(features), (), features)

    def _forward_deep_supervision(self, x):
        aux, h = [], x
        for i, stage in enumerate(self.backbone.stages.values()):
            h = stage(h)
            if i in self.branch_index:
                aux.append(self.aux_heads[self.branch_index.index(i)](h))
        return AuxOutputs(self.backbone.forward_head(h), tuple(aux), h)

    def _forward_relay(self, x):
        b = self.branch_index[0]
        first_overlap = max(0, b - self.overlap + 1)
        trunk = self.backbone.run_stages(x, 0, first_overlap)  # reached by loss2 only
        if first_overlap <= b:
            top, branch = self._overlap(trunk, first_overlap, b + 1, traceable=torch.compiler.is_compiling())
        else:
            branch = trunk
            top = trunk.detach()
        features = self.backbone.run_stages(top, b + 1)
        return AuxOutputs(self.backbone.forward_head(features), (self.aux_heads[0](branch),), features)

    def _overlap(self, trunk: torch.Tensor, start: int, stop: int, traceable: bool):
        """(top, branch): the overlap stages' output on loss1's path (no gradient to `trunk`) and on
        loss2's.  Eager: one pass (`_OverlapRelay`).  Under torch.compile, whose tracer cannot follow
        that function's nested autograd graph (a graph break per step), the reference form it stands
        for: the stages twice with their shared weights, once on the detached trunk.  The gradients are
        the same; dropout draws, and batch-norm statistics are updated, once per pass."""
        run = lambda h: self.backbone.run_stages(h, start, stop)  # noqa: E731
        if traceable:
            return run(trunk.detach()), run(trunk)
        params = [p for s in list(self.backbone.stages.values())[start:stop] for p in s.parameters()]
        return _OverlapRelay.apply(run, trunk, *params)

    def _make_head(self, spec: BranchSpec, index: int) -> nn.Module:
        if spec.head == "copy":  # the layers above the branch, duplicated with fresh weights (WM A/B)
            head = nn.Sequential(*copy.deepcopy(list(self.backbone.stages.values())[index + 1:]),
                                 copy.deepcopy(self.backbone.head))
            initialize(head, self.backbone.init_scheme)
            return head
        return SmallAuxHead(self._channels_after(index), self.backbone.num_classes)  # "small"

    def _channels_after(self, index: int, size: int = 64) -> int:
        was_training = self.backbone.training
        self.backbone.eval()  # a probe must not touch batch-norm statistics
        with torch.no_grad():
            channels = self.backbone.run_stages(torch.zeros(1, 3, size, size), 0, index + 1).shape[1]
        self.backbone.train(was_training)
        return channels


class _OverlapRelay(torch.autograd.Function):
    """The overlap stages, run once, with the gradients two weight-sharing copies would get.

    Outputs two equal tensors: `top` (loss1's path) and `branch` (loss2's path).  Backward receives
    their gradients g1, g2 separately: the overlap's parameters get the gradient of g1 + g2, its
    input only that of g2, so loss1 stops here.  Same result as running the overlap twice (once on
    a detached input), at the cost of one extra input-gradient pass instead of a forward and a
    backward.
    """

    @staticmethod
    def forward(ctx, run, trunk, *params):
        with torch.enable_grad():
            start = trunk.detach().requires_grad_(trunk.requires_grad)
            out = run(start)
        ctx.graph = (start, out, params)
        value = out.detach()
        return value, value.clone()

    @staticmethod
    def backward(ctx, g_top, g_branch):  # autograd materialises a missing gradient as zeros
        start, out, params = ctx.graph
        del ctx.graph
        trainable = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(out, trainable, g_top + g_branch, retain_graph=start.requires_grad,
                                    allow_unused=True)
        by_param = {id(p): g for p, g in zip(trainable, grads)}
        input_grad = torch.autograd.grad(out, start, g_branch)[0] if start.requires_grad else None
        return (None, input_grad, *[by_param.get(id(p)) for p in params])


def wrap(backbone: StagedNet, mode: str | None = None, branch: str | list[str] | None = None,
         aux_head: str | None = None, aux_weight: float | None = None, overlap: int = 1,
         label_smoothing: float = 0.0, num_attributes: int = 0, attribute_weight: float = 1.0,
         scene_weight: float = 1.0) -> RelayNet:
    """The family's defaults (WM: relay after the 28x28 stage; GoogLeNet: two small heads) unless overridden.

    A model with no declared branch gets one below its last stage, a copy of what is above it.
    """
    defaults = backbone.aux_defaults
    mode = mode or defaults.mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if branch is not None:
        names = [branch] if isinstance(branch, str) else list(branch)
        branches = [BranchSpec(n, aux_head or "copy") for n in names]
    elif defaults.branches:
        branches = [BranchSpec(b.after, aux_head or b.head) for b in defaults.branches]
    else:
        branches = [BranchSpec(backbone.stage_names[-2], aux_head or "copy")]
    weight = DEFAULT_AUX_WEIGHT[mode] if aux_weight is None else aux_weight
    return RelayNet(backbone, mode, branches, weight, overlap, label_smoothing, num_attributes, attribute_weight,
                    scene_weight)
