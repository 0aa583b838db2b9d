"""Relay back-propagation routes each loss's gradient exactly where the WM seed says, for any model."""

from __future__ import annotations

import pytest
import torch

from training.models import AuxOutputs, create_model

W = 0.7  # a non-default loss weight, so scaling is checked too


def wm_a(mode="relay", overlap=1, **kw):
    torch.manual_seed(0)
    model = create_model("wm_model_a", 5, mode=mode, overlap=overlap, aux_weight=W, width=0.0625, fc=16,
                         dropout=0.0, **kw)
    return model.double().train()


def batch(size=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, size, size, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 4])


def grads(model, loss_name: str, scale: float = 1.0) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=False)
    x, y = batch()
    (scale * model(x, y)[loss_name]).backward()
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def stage_of(name: str) -> str:
    """'backbone.stages.s28.0.weight' -> 's28'; 'backbone.head...' -> 'head'; 'aux_heads...' -> 'aux'."""
    parts = name.split(".")
    if parts[0] == "aux_heads":
        return "aux"
    return parts[2] if parts[1] == "stages" else "head"


def zero(g: torch.Tensor) -> bool:
    return bool(torch.count_nonzero(g) == 0)


@pytest.mark.parametrize("overlap,reached", [(0, {"s14"}), (1, {"s28", "s14"}), (2, {"s56", "s28", "s14"})])
def test_loss1_alone_stops_below_its_overlap(overlap, reached):
    g = grads(wm_a(overlap=overlap), "loss1")
    for name, grad in g.items():
        part = stage_of(name)
        if part in reached or part == "head":
            assert not zero(grad), name
        else:
            assert zero(grad), name  # exactly zero, not small


def test_loss2_alone_trains_its_head_and_everything_below_the_branch_only():
    g = grads(wm_a(), "loss2")
    for name, grad in g.items():
        part = stage_of(name)
        if part in ("s14", "head"):
            assert zero(grad), name
        else:
            assert not zero(grad), name


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_relay_gradient_is_the_sum_of_the_two_masked_computations(overlap):
    relay = wm_a(overlap=overlap)
    got = grads(relay, "loss")
    below = {"s224", "s112", "s56", "s28"}
    stop = ["s224", "s112", "s56", "s28", "s14"].index("s28") - overlap + 1  # first stage loss1 reaches
    blocked = set(["s224", "s112", "s56", "s28", "s14"][:stop]) | {"aux"}
    relay.mode = "loss12_bp"  # the same weights, plain back-propagation of each loss separately
    g1, g2 = grads(relay, "loss1"), grads(relay, "loss2", scale=W)
    for name in got:
        part = stage_of(name)
        expected = (torch.zeros_like(g1[name]) if part in blocked else g1[name]) + g2[name]
        assert torch.allclose(got[name], expected, rtol=1e-10, atol=1e-12), name
        if part in below and part not in blocked:
            assert not zero(g1[name]) and not zero(g2[name])  # overlap: both losses train it


def test_loss12_bp_is_the_plain_sum():
    model = wm_a(mode="loss12_bp")
    total = grads(model, "loss")
    g1, g2 = grads(model, "loss1"), grads(model, "loss2", scale=W)
    for name in total:
        assert torch.allclose(total[name], g1[name] + g2[name], rtol=1e-10, atol=1e-12), name
    assert not zero(g1["backbone.stages.s224.0.weight"])  # loss1 reaches the input layer here


def test_bp_mode_builds_no_aux_head_and_matches_the_plain_network():
    model = wm_a(mode="bp")
    assert len(model.aux_heads) == 0
    x, y = batch()
    out = model(x)
    assert isinstance(out, AuxOutputs) and out.aux_logits == ()
    assert torch.equal(out.logits, model.export()(x))
    assert set(model(x, y)) == {"loss", "loss1", "logits"}


def test_forward_values_are_unchanged_by_routing():
    relay, x = wm_a(), batch()[0]
    out = relay(x)
    relay.mode = "loss12_bp"
    plain = relay(x)
    assert torch.equal(out.logits, plain.logits) and torch.equal(out.aux_logits[0], plain.aux_logits[0])


def test_wm_defaults_follow_the_seed():
    model = create_model("wm_model_a", 401, width=0.0625, fc=16)
    assert (model.mode, model.aux_weight, model.overlap) == ("relay", 1.0, 1)
    assert [b.after for b in model.branches] == ["s28"] and [b.head for b in model.branches] == ["copy"]
    # the copy branch duplicates the 14x14 stage, the SPP and the FCs, with its own weights
    copy = model.aux_heads[0]
    assert sum(p.numel() for p in copy.parameters()) == sum(
        p.numel() for n, p in model.backbone.named_parameters() if n.startswith(("stages.s14", "head")))
    assert model.aux_heads[0][0][0].weight.data_ptr() != model.backbone.stages["s14"][0].weight.data_ptr()


@pytest.mark.parametrize("name,branch,head", [("resnet18", "layer3", "copy"), ("vgg_a_bn", "conv4", "small"),
                                              ("googlenet", "inception4bcd", "small"), ("simple_net", None, None)])
def test_relay_is_generic_over_architectures(name, branch, head):
    torch.manual_seed(0)
    options = {"input_size": 64} if name.startswith("vgg") else {}
    model = create_model(name, 4, mode="relay", branch=branch, aux_head=head, **options).double().train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    stages = model.backbone.stage_names
    b = stages.index(branch or stages[-2])
    x, y = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([0, 3])
    model(x, y)["loss1"].backward()
    for i, s in enumerate(stages):
        grads_zero = all(zero(p.grad) for p in model.backbone.stages[s].parameters() if p.grad is not None)
        assert grads_zero == (i < b), s  # default overlap: one stage below the branch
    assert all(p.grad is None or zero(p.grad) for p in model.aux_heads.parameters())


def test_bad_relay_settings_are_refused():
    with pytest.raises(ValueError, match="exactly one branch"):
        create_model("googlenet", 4, mode="relay")
    with pytest.raises(ValueError, match="mode must be"):
        create_model("simple_net", 4, mode="relay_bp")
    with pytest.raises(KeyError, match="no stage"):
        create_model("simple_net", 4, mode="relay", branch="nope")
    with pytest.raises(ValueError, match="below the last stage"):
        create_model("simple_net", 4, mode="relay", branch="block3")


def test_relay_runs_each_overlap_stage_forward_once():
    model = wm_a(overlap=2)
    calls = {name: 0 for name in model.backbone.stage_names}
    for name, stage in model.backbone.stages.items():
        stage.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    x, y = batch()
    model(x, y)["loss"].backward()
    assert calls == {name: 1 for name in model.backbone.stage_names}


def test_relay_compiles_without_graph_breaks_and_keeps_its_gradients():
    """Under torch.compile the overlap runs in its traceable two-pass form: one graph, no break at the
    relay, and the gradients of the eager single-pass form."""
    import torch._dynamo

    model = wm_a(overlap=2)
    x, y = batch()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, y)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    eager = grads(model, "loss")
    compiled = torch.compile(model, backend="eager")  # dynamo's trace, run as traced
    model.zero_grad(set_to_none=False)
    compiled(x, y)["loss"].backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, eager[name], rtol=1e-10, atol=1e-12), name
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["relay", "bp"])
def test_multi_label_rows_train_the_softmax_on_equal_shares_of_each_samples_classes(mode):
    """A multi-label split's rows [class, 0/1 per class]: every loss is the cross-entropy against 1/n on
    each of the sample's n classes; a row of one class gives the plain single-label loss."""
    model = wm_a(mode)
    x, y = batch()
    rows = torch.zeros(4, 6, dtype=torch.long)
    rows[:, 0] = torch.tensor([0, 1, 2, 4])
    for i, classes in enumerate([[0, 3], [1], [2, 3, 4], [4]]):
        rows[i, 1 + torch.tensor(classes)] = 1
    torch.manual_seed(3)  # the same dropout draws (none here: dropout=0) and the same forward
    got = model(x, rows)
    shares = rows[:, 1:].double() / rows[:, 1:].sum(1, keepdim=True)
    logits, aux, _ = model(x)
    assert torch.allclose(got["loss1"], -(shares * logits.log_softmax(1)).sum(1).mean())
    for k, a in enumerate(aux, start=2):
        assert torch.allclose(got[f"loss{k}"], -(shares * a.log_softmax(1)).sum(1).mean())
    single = rows.clone()
    single[:, 1:] = torch.nn.functional.one_hot(y, 5)
    assert torch.allclose(model(x, single)["loss"], model(x, y)["loss"])
    with pytest.raises(ValueError, match="neither the model's 5 classes nor its 0 attributes"):
        model(x, rows[:, :4])
