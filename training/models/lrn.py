"""Local response normalisation (AlexNet, GoogLeNet, VGG A-LRN) as one 1x1 convolution.

The same function as `torch.nn.LocalResponseNorm`: b_c = a_c / (k + alpha/n * sum of a_j^2 over the n
channels j around c)^beta.  That is Caffe's and PyTorch's convention, alpha divided by the window n;
AlexNet's paper (the seeds' formula) multiplies the sum by alpha itself: its k=2, n=5, alpha=1e-4,
beta=0.75 are alpha=5e-4 here (`ALEXNET`).  Caffe's reference models pass the paper's 1e-4 to the
alpha/n form, a normalisation five times weaker than the paper's.  PyTorch computes the windowed sum with a 3-D average pool, which is slow
on GPUs (and in channels_last); here it is a 1x1 convolution with a fixed banded 0/1 C x C weight, a
single cuDNN call.  The weight is derived from the channel count, not learned and not saved.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LocalResponseNorm(nn.Module):
    """alpha as PyTorch's: the sum of squares is scaled by alpha / size."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self._bands: dict[tuple, torch.Tensor] = {}

    def band(self, channels: int, device: torch.device) -> torch.Tensor:
        """weight[c, j] = 1 where j is in c's window: [c - size//2, c + (size-1)//2], as PyTorch pads."""
        key = (channels, device)
        if key not in self._bands:
            c = torch.arange(channels, device=device)
            offset = c[None, :] - c[:, None]  # j - c
            inside = (offset >= -(self.size // 2)) & (offset <= (self.size - 1) // 2)
            self._bands[key] = inside.float()[:, :, None, None]
        return self._bands[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.band(x.shape[1], x.device).to(x.dtype)
        total = F.conv2d(x * x, weight)
        return x / (self.k + (self.alpha / self.size) * total).pow(self.beta)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


ALEXNET = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # the paper's k, n, beta, and its alpha (1e-4) times n
