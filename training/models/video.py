"""Karpathy et al. (CVPR 2014), "Large-scale Video Classification with CNNs": the single-frame network,
its three ways of fusing time, and the multiresolution (context + fovea) form of each.

Every network takes a clip as (N, 3, T, S, S) normalised frames, T = len(`clip_offsets`) (which
frames of the video the input stream hands over, relative to the clip's start) and S = `input_size`
(178, the paper's multiresolution frame):

- `video_single_frame`: C(96,11,3)-N-P-C(256,5,1)-N-P-C(384,3,1)-C(384,3,1)-C(256,3,1)-P-FC(4096)-FC(4096)
  on one frame.  Pools are 2x2 stride 2 (ceil), so 178 and the paper's 170 crops both end at 7x7x256.
- `video_early_fusion`: the first layer's filters span all T = 10 frames (11x11x3x10).
- `video_late_fusion`: two single-frame towers with shared weights on frames 15 apart, merged at FC6.
- `video_slow_fusion`: temporal convolutions over 10 frames, conv1 T=4 stride 2 (4 responses), conv2 and
  conv3 T=2 stride 2, so conv3 and above see all ten frames (the paper's four-column hierarchy).
- `..._multires`: a context stream on the frame at half resolution (89x89) and a fovea stream on its
  89x89 centre at full resolution, each the network's conv layers with its own weights and without the
  last pool (so both end at 7x7x256), concatenated into FC6.  `video_single_frame_fovea_only` and
  `video_single_frame_context_only` are the paper's one-stream ablations.

The stages are conv1, conv2, conv3 (conv3-5), fc6 and fc7, and the head is the classifier, so the
paper's transfer study is `optim.trainable_from`: `head` (top layer), `fc6` (top three), none (all).
Streams travel stacked on the batch dimension between stages (stream-major, then clips, then the frames
of late fusion's towers), so every stage takes and returns one tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.base import StagedNet
from training.models.registry import register_model
from training.models.vgg import lrn

WIDTHS = (96, 256, 384, 384, 256)  # conv1..conv5
FUSIONS = {  # fusion -> frames of the clip, as offsets from its first frame
    "single": (0,),
    "early": tuple(range(10)),
    "late": (0, 15),
    "slow": tuple(range(10)),
}
STREAMS = {"full": ("full",), "multires": ("context", "fovea"), "fovea": ("fovea",), "context": ("context",)}


class StreamViews(nn.Module):
    """A clip -> each stream's view of it, stacked on the batch: `full` the frames as given, `context`
    them at half resolution, `fovea` their centre half at full resolution."""

    def __init__(self, streams: tuple[str, ...]):
        super().__init__()
        self.streams = streams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streams == ("full",):
            return x
        half = x.shape[-1] // 2
        start = (x.shape[-1] - half) // 2
        views = {"context": lambda: F.avg_pool3d(x, (1, 2, 2)),
                 "fovea": lambda: x[..., start:start + half, start:start + half]}
        return torch.cat([views[s]() for s in self.streams], 0)


class PerStream(nn.Module):
    """The same layers with separate weights per stream, each on its part of the stacked batch."""

    def __init__(self, columns: list[nn.Module]):
        super().__init__()
        self.columns = nn.ModuleList(columns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.columns) == 1:
            return self.columns[0](x)
        return torch.cat([c(part) for c, part in zip(self.columns, x.chunk(len(self.columns)))], 0)


class FoldFrames(nn.Module):
    """(B, C, T, H, W) -> (B*T, C, H, W): one 2-D tower per frame, weights shared across frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(0, 1)


class StackFrames(nn.Module):
    """(B, C, T, H, W) -> (B, C*T, H, W): early fusion's first filters see every frame's pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, 2)


class FrameWise(nn.Module):
    """A 2-D layer applied to each time step of a (B, C, T, H, W) activation."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        y = self.layer(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, t)).transpose(1, 2)


class DropTime(nn.Module):
    """(B, C, 1, H, W) -> (B, C, H, W), once slow fusion has fused all frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(2)


class MergeStreams(nn.Module):
    """(S*N*F, C, H, W), stream-major then clip then tower -> (N, S*F*C*H*W): every stream's and tower's
    features of one clip side by side, the input of FC6."""

    def __init__(self, streams: int, towers: int):
        super().__init__()
        self.streams, self.towers = streams, towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_clip = x.reshape(self.streams, -1, self.towers * x[0].numel())  # (S, N, F*D)
        return per_clip.transpose(0, 1).flatten(1)


def _pool2d() -> nn.Module:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


def _tower(fusion: str, frames: int, c: list[int], last_pool: bool) -> list[nn.Sequential]:
    """conv1, conv2, conv3-5 of one stream."""
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    if fusion == "slow":
        pool3d = lambda: nn.MaxPool3d((1, 2, 2), (1, 2, 2), ceil_mode=True)  # noqa: E731
        conv1 = [nn.Conv3d(3, c[0], (4, 11, 11), (2, 3, 3)), relu(), FrameWise(lrn()), pool3d()]
        conv2 = [nn.Conv3d(c[0], c[1], (2, 5, 5), (2, 1, 1), (0, 2, 2)), relu(), FrameWise(lrn()), pool3d()]
        conv3 = [nn.Conv3d(c[1], c[2], (2, 3, 3), (2, 1, 1), (0, 1, 1)), relu(), DropTime()]
    else:
        first = [StackFrames(), nn.Conv2d(3 * frames, c[0], 11, 3)] if fusion == "early" else \
            [FoldFrames(), nn.Conv2d(3, c[0], 11, 3)]
        conv1 = [*first, relu(), lrn(), _pool2d()]
        conv2 = [nn.Conv2d(c[0], c[1], 5, 1, 2), relu(), lrn(), _pool2d()]
        conv3 = [nn.Conv2d(c[1], c[2], 3, 1, 1), relu()]
    conv3 += [nn.Conv2d(c[2], c[3], 3, 1, 1), relu(), nn.Conv2d(c[3], c[4], 3, 1, 1), relu()]
    if last_pool:
        conv3.append(_pool2d())
    return [nn.Sequential(*conv1), nn.Sequential(*conv2), nn.Sequential(*conv3)]


def feature_size(stream_size: int, last_pool: bool) -> int:
    s = (stream_size - 11) // 3 + 1  # conv1, 11x11 stride 3, no padding
    s = math.ceil(math.ceil(s / 2) / 2)  # pool1; conv2 keeps the size; pool2
    return math.ceil(s / 2) if last_pool else s


def fusion_offsets(fusion: str, frames: int | None = None) -> tuple[int, ...]:
    """The frames a fusion takes, as offsets from the clip's first frame (`frames`: early fusion's extent)."""
    offsets = FUSIONS[fusion]
    if frames is not None and frames != len(offsets):
        if fusion != "early":
            raise ValueError(f"{fusion} fusion takes {len(offsets)} frames, not {frames}: only early "
                             f"fusion's temporal extent is an option")
        offsets = tuple(range(frames))
    return offsets


class VideoNet(StagedNet):
    def __init__(self, num_classes: int = 487, fusion: str = "single", streams: str = "full",
                 input_size: int = 178, width: float = 1.0, fc: int = 4096, dropout: float = 0.5,
                 frames: int | None = None, init: str = "he"):
        if fusion not in FUSIONS or streams not in STREAMS:
            raise ValueError(f"fusion must be one of {list(FUSIONS)} and streams one of {list(STREAMS)}")
        offsets = fusion_offsets(fusion, frames)
        self.clip_offsets = offsets  # which frames of a clip the input stream must hand over
        names = STREAMS[streams]
        multires = names != ("full",)
        c = [max(4, round(n * width)) for n in WIDTHS]
        columns = [_tower(fusion, len(offsets), c, last_pool=not multires) for _ in names]
        conv = [PerStream([column[i] for column in columns]) for i in range(3)]
        side = feature_size(input_size // 2 if multires else input_size, last_pool=not multires)
        towers = len(offsets) if fusion == "late" else 1
        merged = len(names) * towers * c[4] * side * side
        stages = [
            ("conv1", nn.Sequential(StreamViews(names), conv[0])),
            ("conv2", conv[1]),
            ("conv3", conv[2]),
            ("fc6", nn.Sequential(MergeStreams(len(names), towers), nn.Linear(merged, fc), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout))),
            ("fc7", nn.Sequential(nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout))),
        ]
        super().__init__(stages, nn.Linear(fc, num_classes), num_classes, init=init)
        self.input_size, self.fusion, self.streams = input_size, fusion, names


def _register(name: str, fusion: str, streams: str) -> None:
    register_model(name, clip_offsets=lambda frames=None, **_: fusion_offsets(fusion, frames))(
        lambda num_classes=487, **options: VideoNet(num_classes, fusion, streams, **options))


for _fusion in FUSIONS:
    _stem = "video_single_frame" if _fusion == "single" else f"video_{_fusion}_fusion"
    _register(_stem, _fusion, "full")
    _register(f"{_stem}_multires", _fusion, "multires")
_register("video_single_frame_fovea_only", "single", "fovea")
_register("video_single_frame_context_only", "single", "context")
