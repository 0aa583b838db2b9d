"""The architecture zoo: parameter counts against the papers, the shared interface, dense evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from training.models import (build_backbone, create_model, init_from_shallower, list_models, register_model)
from training.models.googlenet import INCEPTION
from training.models.heads import DenseSPP, SPPHead

ALL = ["wm_model_a", "wm_model_b", "alexnet", "zfnet", "vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e",
       "vgg_a_bn", "vgg_b_bn", "vgg_c_bn", "vgg_d_bn", "vgg_e_bn", "googlenet", "resnet18", "resnet34",
       "resnet50", "resnet101", "resnet152", "plain18", "plain34", "resnext50_32x4d", "densenet121", "simple_net"]


def params(m: nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_registry_lists_every_required_name_and_refuses_duplicates():
    assert set(ALL) <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("vgg_d")(lambda num_classes=1000: None)
    with pytest.raises(KeyError, match="unknown model"):
        build_backbone("vgg_z")


@pytest.mark.parametrize("name,millions,tol", [
    ("vgg_a", 133, 0.005), ("vgg_a_lrn", 133, 0.005), ("vgg_b", 133, 0.005), ("vgg_c", 134, 0.005),
    ("vgg_d", 138, 0.005), ("vgg_e", 144, 0.005), ("alexnet", 60, 0.02), ("resnet18", 11.7, 0.005),
    ("resnet34", 21.8, 0.005), ("resnet50", 25.6, 0.005), ("resnet101", 44.5, 0.005),
    ("resnet152", 60.2, 0.005), ("resnext50_32x4d", 25.0, 0.005), ("densenet121", 8.0, 0.005)])
def test_parameter_counts_match_the_papers(name, millions, tol):
    assert abs(params(build_backbone(name, 1000)) - millions) / millions <= tol


def test_googlenet_matches_its_table_without_aux_heads():
    """6.8M is the sum of Table 1's rounded per-layer figures, which under-count the layer shapes the
    same table gives by ~3%; the shapes themselves are reproduced exactly."""
    model = create_model("googlenet", 1000)
    assert len(model.aux_heads) == 2 and model.aux_weight == 0.3
    deploy = model.export()
    assert abs(params(deploy) - 6.8) / 6.8 < 0.03
    for name, (n1, r3, n3, r5, n5, pp) in INCEPTION.items():
        module = next(m for m in deploy.modules() if getattr(m, "out_channels", None) == n1 + n3 + n5 + pp
                      and hasattr(m, "b5") and m.b5[1][0].out_channels == n5 and m.b1[0].out_channels == n1)
        cin = module.b1[0].in_channels
        weights = cin * n1 + cin * r3 + 9 * r3 * n3 + cin * r5 + 25 * r5 * n5 + cin * pp
        assert sum(p.numel() for n, p in module.named_parameters() if n.endswith("weight")) == weights, name


def test_wm_model_b_spp_has_32256_features():
    model = build_backbone("wm_model_b", 401)
    assert model.head.features == 32256
    feats = model.forward_features(torch.zeros(1, 3, 224, 224))
    assert feats.shape[-2:] == (14, 14) and model.head.pool(feats).shape == (1, 32256)
    assert build_backbone("wm_model_a", 401).head.features == 32256


def test_wm_model_a_has_22_weight_layers():
    model = build_backbone("wm_model_a", 401)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == 22


def small_options(name: str) -> dict:
    if name.startswith("wm_"):
        return {"width": 0.0625, "fc": 64}
    if name.startswith(("vgg", "alexnet", "zfnet")):
        return {"input_size": 64}
    return {}


@pytest.mark.parametrize("name", ALL)
def test_every_model_trains_and_evaluates_one_step_on_cpu(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **small_options(name))
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    losses = model(x, y)
    assert losses["logits"].shape == (2, 5) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    names = model.backbone.stage_names
    assert len(names) >= 3 and model.forward_features(x).dim() == 4


def test_aux_heads_run_only_in_training_and_export_drops_them():
    model = create_model("googlenet", 7)
    model.train()
    out = model(torch.randn(2, 3, 96, 96))
    assert out.logits.shape == (2, 7) and len(out.aux_logits) == 2
    model.eval()
    calls = []
    hooks = [h.register_forward_hook(lambda *a: calls.append(1)) for h in model.aux_heads]
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 7) and not calls
    for h in hooks:
        h.remove()
    assert not any(k.startswith("aux") for k in model.export().state_dict())
    assert any(k.startswith("aux_heads") for k in model.state_dict())


@pytest.mark.parametrize("name", ["alexnet", "zfnet", "vgg_a", "vgg_c", "wm_model_a", "wm_model_b"])
def test_dense_evaluation_averages_to_the_fc_output_at_224(name):
    torch.manual_seed(0)
    model = build_backbone(name, 6, **({"width": 0.0625, "fc": 32} if name.startswith("wm") else {}))
    model = model.double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        dense = model.forward_dense(x)
        assert torch.allclose(dense.mean((2, 3)), model(x), rtol=1e-9, atol=1e-9)
        bigger = model.forward_dense(torch.randn(1, 3, 320, 256, dtype=torch.float64))
    assert bigger.shape[:2] == (1, 6) and bigger.shape[2] > bigger.shape[3] > 1


def test_dense_spp_equals_the_spp_head_on_every_window():
    torch.manual_seed(0)
    head = SPPHead(3, 4, hidden=(8, 8)).double().eval()
    fmap = torch.randn(2, 3, 19, 16, dtype=torch.float64)
    with torch.no_grad():
        dense = DenseSPP(head)(fmap)
        assert dense.shape == (2, 4, 6, 3)
        for i in range(6):
            for j in range(3):
                expected = head(fmap[:, :, i:i + 14, j:j + 14])
                assert torch.allclose(dense[:, :, i, j], expected, rtol=1e-10, atol=1e-10)


def test_deeper_vgg_starts_from_a_trained_shallower_one():
    torch.manual_seed(0)
    a, d = build_backbone("vgg_a", 10, input_size=64), build_backbone("vgg_d", 10, input_size=64)
    copied = init_from_shallower(d, a)
    a_convs = [m for m in a.modules() if isinstance(m, nn.Conv2d)]
    # A's first four convolutions: conv1_1, conv2_1, conv3_1, conv3_2 -> the same positions in D
    d_stages = d.stages
    assert torch.equal(d_stages["conv1"][0].weight, a_convs[0].weight)
    assert torch.equal(d_stages["conv2"][0].weight, a_convs[1].weight)
    assert torch.equal(d_stages["conv3"][0].weight, a_convs[2].weight)
    assert torch.equal(d_stages["conv3"][2].weight, a_convs[3].weight)
    assert not torch.equal(d_stages["conv4"][0].weight[:1], a.stages["conv4"][0].weight[:1])
    fcs_a = [m for m in a.head.modules() if isinstance(m, nn.Linear)]
    fcs_d = [m for m in d.head.modules() if isinstance(m, nn.Linear)]
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(fcs_a, fcs_d)) and len(copied) == 7


@pytest.mark.parametrize("scheme", ["he", "glorot", "gaussian", "gaussian_vgg"])
def test_initialisation_schemes(scheme):
    torch.manual_seed(0)
    model = build_backbone("vgg_a", 10, input_size=64, init=scheme)
    conv = model.stages["conv4"][0]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    expected = {"he": (2 / fan_out) ** 0.5, "glorot": (2 / (fan_in + fan_out)) ** 0.5, "gaussian": 0.01,
                "gaussian_vgg": 0.1}[scheme]  # VGG: "10^-2 variance"
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("size,channels", [(5, 96), (5, 3), (4, 16)])
def test_lrn_as_a_convolution_equals_pytorchs(size, channels):
    from training.models.lrn import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.randn(2, channels, 7, 5, dtype=torch.float64) * 30).requires_grad_(True)
    ours, ref = LocalResponseNorm(size, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(size, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)
    g_ours, = torch.autograd.grad((ours(x) ** 2).sum(), x)
    g_ref, = torch.autograd.grad((ref(x) ** 2).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    last = x.detach().float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(last), ref(last), rtol=1e-5, atol=1e-5)


def test_alexnet_biases_are_the_papers():
    """1 in conv2, conv4, conv5 and the hidden FC layers; 0 in conv1, conv3 and the output layer."""
    model = build_backbone("alexnet", 10)
    convs = [m for m in model.stages.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    ones = [torch.all(layer.bias == 1).item() for layer in convs + fcs]
    zeros = [torch.all(layer.bias == 0).item() for layer in convs + fcs]
    assert ones == [False, True, False, True, True, True, True, False]
    assert zeros == [not one for one in ones]
    assert abs(convs[2].weight.std().item() - 0.01) < 0.001


def test_lrn_is_alexnets_formula_with_its_constants():
    """b = a / (2 + 1e-4 * sum over the 5 channels around of a^2)^0.75, the paper's own form (its alpha
    is not divided by n, as Caffe and PyTorch divide theirs)."""
    from training.models.vgg import lrn

    torch.manual_seed(0)
    a = torch.randn(1, 8, 3, 3, dtype=torch.float64) * 40
    padded = torch.nn.functional.pad(a * a, (0, 0, 0, 0, 2, 2))
    window = torch.stack([padded[:, c:c + 5].sum(1) for c in range(8)], 1)
    torch.testing.assert_close(lrn()(a), a / (2 + 1e-4 * window) ** 0.75, rtol=1e-12, atol=0)


def test_googlenet_aux_heads_pool_5x5_stride_3_as_the_paper():
    """4x4x512 out of inception 4a's 14x14 map (4x4x528 out of 4d's) at a 224 input: 5x5 windows at 0, 3,
    6, 9, not an adaptive pool's 4x4 windows at 0, 3, 7, 10."""
    from training.models.heads import SmallAuxHead

    model = create_model("googlenet", num_classes=5)
    heads = list(model.aux_heads)
    seen = []
    hooks = [h.pool.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape[1:]), tuple(o.shape[1:]))))
             for h in heads]
    model.train()
    model(torch.randn(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    assert seen == [((512, 14, 14), (512, 4, 4)), ((528, 14, 14), (528, 4, 4))]
    head = SmallAuxHead(3, 2)
    x = torch.randn(1, 3, 14, 14)
    expected = torch.stack([torch.stack([x[0, :, i:i + 5, j:j + 5].mean((1, 2)) for j in (0, 3, 6, 9)], -1)
                            for i in (0, 3, 6, 9)], -2)
    torch.testing.assert_close(head.pool(x)[0], expected)
    assert head(torch.randn(2, 3, 9, 9)).shape == (2, 2)  # other input sizes still give the fc its 4x4



def test_resnet_option_a_shortcuts_match_plain_parameters_and_pad_with_zeros():
    """The paper's plain-vs-residual comparison at 18/34 layers: option A adds no parameter."""
    from training.models.resnet import PadShortcut

    def count(model):
        return sum(p.numel() for p in model.parameters())

    for depth in (18, 34):
        residual_a = build_backbone(f"resnet{depth}", 10, shortcut_type="A")
        assert count(residual_a) == count(build_backbone(f"plain{depth}", 10))
        assert count(build_backbone(f"resnet{depth}", 10)) > count(residual_a)  # option B's projections
    x = torch.randn(2, 64, 8, 8)
    y = PadShortcut(64, 2)(x)
    assert y.shape == (2, 128, 4, 4) and torch.equal(y[:, :64], x[:, :, ::2, ::2]) and not y[:, 64:].any()
    assert residual_a(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_resnet_v1_bottleneck_strides_its_first_1x1():
    v1 = build_backbone("resnet50", 10, bottleneck_stride="1x1")
    v15 = build_backbone("resnet50", 10)
    first = v1.stages["layer2"][0].body
    assert (first[0].stride, first[3].stride) == ((2, 2), (1, 1))
    assert (v15.stages["layer2"][0].body[0].stride, v15.stages["layer2"][0].body[3].stride) == ((1, 1), (2, 2))
    assert v1(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="shortcut_type must be A or B"):
        build_backbone("resnet18", 10, shortcut_type="C")


def test_zfnet_pools_before_it_normalises_and_drops_out_input_pixels():
    from training.models.lrn import LocalResponseNorm

    model = build_backbone("zfnet", 5, input_dropout=0.2)
    conv1, conv2 = (list(model.stages[name]) for name in ("conv1", "conv2"))
    assert [type(m) for m in conv1] == [nn.Dropout, nn.Conv2d, nn.ReLU, nn.MaxPool2d, LocalResponseNorm]
    assert [type(m) for m in conv2] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, LocalResponseNorm]
    assert conv1[0].p == 0.2 and not any(isinstance(m, nn.Dropout) for m in build_backbone("zfnet", 5).stages["conv1"])
    x = torch.rand(1, 3, 224, 224) + 0.5  # no zero pixel: a zero after dropout is a dropped one
    dropped = conv1[0].train()(x)
    assert 0.1 < (dropped == 0).float().mean() < 0.3 and torch.equal(conv1[0].eval()(x), x)
    assert model.eval()(x).shape == (1, 5)
    with pytest.raises(ValueError, match="input_dropout"):
        build_backbone("zfnet", 5, input_dropout=1.0)
