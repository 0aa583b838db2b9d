"""The multi-label scene-attribute head: global average pooling of the top feature map, then one logit
per attribute, trained with binary cross-entropy beside (or instead of) the scene classifier.

Any `StagedNet` gets it the same way (its last stage's map), so attributes need no per-model code.
Targets are 0/1 per attribute, or `MISSING` (-1) for a sample kept without attribute labels: those
entries add nothing to the loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MISSING = -1  # pipelines.offline.attributes.MISSING: no label for this attribute of this sample


class AttributeHead(nn.Module):
    def __init__(self, channels: int, num_attributes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_attributes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the labelled (sample, attribute) pairs; 0 when there are none."""
    known = targets != MISSING
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(), reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)
