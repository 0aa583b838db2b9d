"""Karpathy et al.'s video networks: every layer's shape and parameter count as the paper describes them,
and the time-dependence each fusion promises."""

import pytest
import torch
import torch.nn as nn

from training.models import create_model, list_models
from training.models.freezing import freeze

VIDEO_MODELS = [m for m in list_models() if m.startswith("video_")]
WIDTHS = [96, 256, 384, 384, 256]


def conv_outputs(name: str, size: int = 178, **options) -> tuple[list[tuple], list[tuple], int]:
    """(output shape of every conv layer, weight shape of every conv and linear layer, fc6 input) at full
    size, on the meta device (shapes only)."""
    with torch.device("meta"):
        model = create_model(name, 487, **options).backbone
        shapes = []
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        for m in convs:
            m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        model.eval()(torch.empty(2, 3, len(model.clip_offsets), size, size))
    weights = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    fc6 = model.stages["fc6"][1].in_features
    return shapes, weights, fc6


def paper_params(first_in: int, first_kernel: tuple, later_kernels: list[tuple], streams: int, fc6_in: int,
                 classes: int = 487) -> int:
    """Parameters from the layer list C(96,11,3)-...-FC(4096)-FC(4096)-softmax."""
    kernels = [first_kernel, *later_kernels]
    ins = [first_in, *WIDTHS[:-1]]
    conv = sum(d * c * torch.Size(k).numel() + d for d, c, k in zip(WIDTHS, ins, kernels))
    return streams * conv + fc6_in * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * classes + classes


SPATIAL = [(5, 5), (3, 3), (3, 3), (3, 3)]


@pytest.mark.parametrize("size, sides", [(178, [56, 28, 14, 14, 14]), (170, [54, 27, 14, 14, 14])])
def test_single_frame_layers(size, sides):
    shapes, weights, fc6 = conv_outputs("video_single_frame", size)
    assert shapes == [(d, s, s) for d, s in zip(WIDTHS, sides)]
    assert weights[:5] == [(96, 3, 11, 11), (256, 96, 5, 5), (384, 256, 3, 3), (384, 384, 3, 3), (256, 384, 3, 3)]
    assert weights[5:] == [(4096, 256 * 7 * 7), (4096, 4096), (487, 4096)]
    assert fc6 == 256 * 7 * 7


def test_early_fusion_first_filters_span_ten_frames():
    shapes, weights, fc6 = conv_outputs("video_early_fusion")
    assert weights[0] == (96, 3 * 10, 11, 11)
    assert shapes == [(96, 56, 56), (256, 28, 28), (384, 14, 14), (384, 14, 14), (256, 14, 14)]
    model = create_model("video_early_fusion", 487, input_size=178).backbone
    assert sum(p.numel() for p in model.parameters()) == paper_params(30, (11, 11), SPATIAL, 1, fc6)


def test_late_fusion_two_shared_towers_fifteen_frames_apart():
    shapes, weights, fc6 = conv_outputs("video_late_fusion")
    model = create_model("video_late_fusion", 487).backbone
    assert model.clip_offsets == (0, 15)
    assert weights[0] == (96, 3, 11, 11)  # one tower's weights, shared by both frames
    assert shapes[0] == (96, 56, 56)
    assert fc6 == 2 * 256 * 7 * 7
    assert sum(p.numel() for p in model.parameters()) == paper_params(3, (11, 11), SPATIAL, 1, fc6)


def test_slow_fusion_temporal_hierarchy():
    shapes, weights, fc6 = conv_outputs("video_slow_fusion")
    assert weights[:3] == [(96, 3, 4, 11, 11), (256, 96, 2, 5, 5), (384, 256, 2, 3, 3)]
    # 10 frames -> 4 responses in time -> 2 -> 1: conv3 and above see every frame
    assert shapes == [(96, 4, 56, 56), (256, 2, 28, 28), (384, 1, 14, 14), (384, 14, 14), (256, 14, 14)]
    model = create_model("video_slow_fusion", 487).backbone
    kernels = [(2, 5, 5), (2, 3, 3), (3, 3), (3, 3)]
    assert sum(p.numel() for p in model.parameters()) == paper_params(3, (4, 11, 11), kernels, 1, fc6)
    with pytest.raises(ValueError, match="slow fusion takes 10 frames"):
        create_model("video_slow_fusion", 10, frames=6)


@pytest.mark.parametrize("name, streams", [("video_single_frame_multires", 2), ("video_single_frame_fovea_only", 1),
                                           ("video_single_frame_context_only", 1)])
def test_multires_streams_end_at_7x7x256(name, streams):
    shapes, weights, fc6 = conv_outputs(name)
    # 89x89 per stream, the last pool dropped: 27 -> 14 -> 7; each stage runs the streams in turn
    conv3_5 = [(384, 7, 7), (384, 7, 7), (256, 7, 7)]
    assert shapes == [(96, 27, 27)] * streams + [(256, 14, 14)] * streams + conv3_5 * streams
    assert fc6 == streams * 256 * 7 * 7
    model = create_model(name, 487).backbone
    assert sum(p.numel() for p in model.parameters()) == paper_params(3, (11, 11), SPATIAL, streams, fc6)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_every_video_model_trains_through_the_common_interface(name):
    model = create_model(name, 5, width=0.125, fc=32)
    clips = torch.randn(3, 3, len(model.backbone.clip_offsets), 178, 178)
    losses = model(clips, torch.tensor([0, 3, 4]))
    losses["loss"].backward()
    assert losses["logits"].shape == (3, 5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.backbone.stage_names == ["conv1", "conv2", "conv3", "fc6", "fc7"]


def small(name):
    torch.manual_seed(0)
    return create_model(name, 7, width=0.125, fc=32, input_size=90).backbone.eval()


@pytest.mark.parametrize("name", ["video_early_fusion", "video_slow_fusion", "video_late_fusion",
                                  "video_slow_fusion_multires"])
def test_fusion_outputs_depend_on_frame_order(name):
    model = small(name)
    clips = torch.randn(2, 3, len(model.clip_offsets), 90, 90)
    with torch.no_grad():
        assert not torch.allclose(model(clips), model(clips.flip(2)), atol=1e-5)


def test_single_frame_is_a_function_of_its_frame_alone():
    model = small("video_single_frame")
    frames = torch.randn(4, 3, 1, 90, 90)
    with torch.no_grad():
        together = model(frames)
        alone = torch.cat([model(frames[i:i + 1]) for i in range(4)])
        reordered = model(frames[[2, 0, 3, 1]])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered, together[[2, 0, 3, 1]], atol=1e-5, rtol=1e-5)


def test_fovea_sees_the_centre_and_context_the_whole_frame():
    clips = torch.randn(2, 3, 1, 90, 90)
    border = clips.clone()
    border[..., :20, :] += 1  # outside the centre 45x45 (rows 22..66)
    with torch.no_grad():
        fovea = small("video_single_frame_fovea_only")
        torch.testing.assert_close(fovea(border), fovea(clips))
        context = small("video_single_frame_context_only")
        assert not torch.allclose(context(border), context(clips), atol=1e-5)


def test_transfer_study_stages():
    """The paper's UCF-101 study: top layer (trainable_from head), top three (fc6), all (none)."""
    model = create_model("video_slow_fusion", 101, width=0.125, fc=32)
    conv = sum(p.numel() for n in ("conv1", "conv2", "conv3") for p in model.backbone.stages[n].parameters())
    assert freeze(model, "fc6") == conv
    top = create_model("video_slow_fusion", 101, width=0.125, fc=32)
    trained = sum(p.numel() for p in top.parameters()) - freeze(top, "head")
    assert trained == 32 * 101 + 101
