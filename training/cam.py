"""Where in the image a class was seen: class activation maps for any `StagedNet`.

- CAM (Zhou et al. 2016) for global-average-pooled heads (`PoolLinearHead`: ResNet, DenseNet,
  GoogLeNet): the classifier's weights for the class, applied at every position of the last feature
  map.  Its spatial mean plus the class's bias is the class's logit exactly.
- Grad-CAM (Selvaraju et al. 2017) for every other head (VGG's and AlexNet's FC layers, the WM models'
  pyramid pooling): the feature channels weighted by the spatial mean of the logit's gradient.

Both are ReLU'd and scaled to [0, 1]; for a global-average-pooled head, Grad-CAM and CAM coincide.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.models.heads import PoolLinearHead


def class_scores(backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), the last feature map (N, C, h, w), which requires grad)."""
    features = backbone.forward_features(x).detach().requires_grad_(True)
    return backbone.forward_head(features), features


def raw_cam(backbone, features: torch.Tensor, logits: torch.Tensor, cls: int, method: str = "auto") -> torch.Tensor:
    """The unscaled map (N, h, w) of class `cls`; `method`: auto | cam | gradcam."""
    if method == "auto":
        method = "cam" if isinstance(backbone.head, PoolLinearHead) else "gradcam"
    if method == "cam":
        weight = backbone.head.fc.weight[cls]
        return torch.einsum("c,nchw->nhw", weight, features).detach()
    (grads,) = torch.autograd.grad(logits[:, cls].sum(), features, retain_graph=True)
    return (grads.mean((2, 3), keepdim=True) * features).sum(1).detach()


def activation_map(backbone, features: torch.Tensor, logits: torch.Tensor, cls: int, size: tuple[int, int],
                   method: str = "auto") -> np.ndarray:
    """Image `size` (h, w) map of the first image, in [0, 1]."""
    cam = F.relu(raw_cam(backbone, features, logits, cls, method)[:1])
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max().clamp_min(1e-12)).numpy()
