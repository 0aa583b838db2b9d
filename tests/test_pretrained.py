"""Fine-tuning: torchvision weights and our checkpoints loaded by name map, frozen stages, new-layer rates."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

from training.config import OptimConfig
from training.models import create_model
from training.models.freezing import freeze, train_mode
from training.optim import make_optimizer
from training.pretrained import load_pretrained
from training.published import TORCHVISION_TWINS, ModelFileError, torchvision_name_map


def saved_torchvision(tmp_path, arch: str, num_classes: int = 1000, seed: int = 0):
    """A torchvision network with random (not default-initialised) weights and statistics, saved as
    `torch.save(model.state_dict())` writes it."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, TORCHVISION_TWINS[arch])(num_classes=num_classes)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.1 + (0.9 if name.endswith("running_var") else 0.0))
    path = tmp_path / f"{arch}.pt"
    torch.save(net.state_dict(), path)
    return net.eval(), str(path)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_TWINS))
def test_every_twin_pairs_each_torchvision_tensor_with_one_of_ours(arch):
    mapping = torchvision_name_map(arch)
    ours = create_model(arch, 1000).backbone.state_dict()
    assert sorted(mapping.values()) == sorted(ours)  # a bijection onto our tensors


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "densenet121", "vgg_a", "vgg_b_bn"])
def test_torchvision_weights_load_exactly_and_compute_the_same_function(tmp_path, arch):
    theirs, path = saved_torchvision(tmp_path, arch)
    model = create_model(arch, 1000)
    assert load_pretrained(model, arch, path) == []
    mapping = torchvision_name_map(arch)
    ours = model.backbone.state_dict()
    for their_key, tensor in theirs.state_dict().items():
        assert torch.equal(ours[mapping[their_key]], tensor), their_key
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_another_class_count_replaces_the_classifier_only(tmp_path):
    theirs, path = saved_torchvision(tmp_path, "resnet18")
    torch.manual_seed(1)
    model = create_model("resnet18", 5)
    before = model.backbone.head.fc.weight.clone()
    assert load_pretrained(model, "resnet18", path) == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(model.backbone.head.fc.weight, before)  # fresh, as built
    assert torch.equal(model.backbone.stages.layer4[1].body[4].running_var, theirs.layer4[1].bn2.running_var)


def test_a_file_that_does_not_fit_is_one_error_listing_every_problem(tmp_path):
    _, path = saved_torchvision(tmp_path, "resnet18")
    state = torch.load(path, weights_only=True)
    del state["layer2.0.conv1.weight"]
    state["layer3.0.bn1.weight"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError) as err:
        load_pretrained(create_model("resnet18", 1000), "resnet18", str(tmp_path / "bad.pt"))
    message = str(err.value)
    assert "(3 problems)" in message and "missing stages.layer2.0.body.0.weight (128, 64, 3, 3)" in message
    assert "unexpected (torchvision) extra.weight (3,)" in message
    assert "stages.layer3.0.body.1.weight: file (7,), model (256,)" in message
    model = create_model("resnet18", 1000)  # not strict: what fits is loaded
    load_pretrained(model, "resnet18", str(tmp_path / "bad.pt"), strict=False)
    assert torch.equal(model.backbone.stages.stem[0].weight, state["conv1.weight"])


def test_files_that_are_not_weights_are_refused_safely(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ModelFileError, match="not a weights file torch.load can read safely"):
        load_pretrained(create_model("resnet18", 10), "resnet18", str(tmp_path / "evil.pt"))
    with pytest.raises(ModelFileError, match="no file at"):
        load_pretrained(create_model("resnet18", 10), "resnet18", str(tmp_path / "none.pt"))
    _, path = saved_torchvision(tmp_path, "vgg_a")
    with pytest.raises(ModelFileError, match="alexnet has no torchvision twin"):
        load_pretrained(create_model("alexnet", 10), "alexnet", path)
    with pytest.raises(ModelFileError, match="shortcut_type='A' is not torchvision's resnet18"):
        torchvision_name_map("resnet18", {"shortcut_type": "A"})


def test_our_checkpoints_and_exported_backbones_load_too(tmp_path):
    torch.manual_seed(3)
    trained = create_model("resnet18", 4, mode="loss12_bp", branch="layer2")
    torch.save({"model": trained.state_dict(), "config": {}, "ema": None}, tmp_path / "state.pt")
    torch.save(trained.export().state_dict(), tmp_path / "backbone.pt")
    for source in (str(tmp_path), str(tmp_path / "backbone.pt")):  # a checkpoint folder, or a file
        model = create_model("resnet18", 4, mode="relay", branch="layer3")
        heads = {k: v.clone() for k, v in model.aux_heads.state_dict().items()}
        assert load_pretrained(model, "resnet18", source) == []
        for k, v in trained.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[k], v)
        assert all(torch.equal(model.aux_heads.state_dict()[k], v) for k, v in heads.items())  # created fresh


def test_frozen_stages_get_no_gradient_and_keep_their_batch_norm_statistics():
    torch.manual_seed(0)
    model = create_model("resnet18", 3)
    assert freeze(model, "layer3") == sum(p.numel() for name in ("stem", "layer1", "layer2")
                                          for p in model.backbone.stages[name].parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, OptimConfig(lr=0.1, trainable_from="layer3"))
    train_mode(model, "layer3")
    norms = {name: [m.training for m in model.backbone.stages[name].modules() if isinstance(m, torch.nn.BatchNorm2d)]
             for name in ("layer2", "layer3")}
    assert not any(norms["layer2"]) and all(norms["layer3"])
    losses = model(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    losses["loss"].backward()
    optimizer.step()
    after = model.state_dict()
    for name, p in model.named_parameters():
        frozen = name.split(".")[2] in ("stem", "layer1", "layer2")
        assert (p.grad is None) == frozen, name
        assert torch.equal(after[name], before[name]) == frozen, name
    for name in after:  # running statistics: unchanged below layer3, updated from it on
        if "running_mean" in name:
            assert torch.equal(after[name], before[name]) == (name.split(".")[2] in ("stem", "layer1", "layer2"))
    with pytest.raises(ValueError, match="not a stage of this model; stages: stem, layer1, layer2, layer3, layer4, head"):
        freeze(model, "layer9")


def test_head_lr_mult_speeds_up_the_classifier_and_the_auxiliary_heads():
    model = create_model("resnet18", 3, mode="loss12_bp", branch="layer2")
    freeze(model, "head")  # a linear probe: the classifier and the auxiliary head train
    optimizer = make_optimizer(model, OptimConfig(lr=0.01, head_lr_mult=10, decay_norm_and_bias=False))
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    new = {id(p) for p in [*model.backbone.head.fc.parameters(), *model.aux_heads.parameters()]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(rates) == trainable and new <= trainable
    assert all(rates[i] == pytest.approx(0.1 if i in new else 0.01) for i in rates)
    assert not any(rates.get(id(p)) for p in model.backbone.stages.parameters())


@pytest.mark.slow
def test_fine_tuning_under_ray_train_from_a_published_file_then_from_the_run(ray_cluster, tmp_path, capsys):
    """Phase 1 trains layer4 and a new 3-class classifier on a resnet18 saved as the CSAILVision release
    saves theirs (`resnet18_places365.pth.tar`); everything below layer4 ends exactly as the file holds
    it (weights and batch-norm statistics).  Phase 2 starts all layers from phase 1's run folder."""
    import json

    from conftest import csail_file, write_shards
    from training import run
    from training.checkpoint import contents
    from training.checkpoint.contents import inference_weights

    write_shards(tmp_path / "train", [24, 16, 8], shard_samples=8, size=32)
    write_shards(tmp_path / "val", [6, 6, 6], shard_samples=6, size=32)
    theirs, path = csail_file(tmp_path, "resnet18")
    common = ["--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
              "--set", f"run.storage_path={tmp_path}/runs", "--set", "run.epochs=1", "--set", "run.workers=1",
              "--set", "model.name=resnet18", "--set", "model.num_classes=3", "--set", "model.mode=bp",
              "--set", "data.size=32", "--set", "data.eval_resize=36", "--set", "data.batch_size=8",
              "--set", "model.num_attributes=0"]
    probe = [*common, "--set", f"model.pretrained={path}", "--set", "optim.trainable_from=layer4",
             "--set", "optim.head_lr_mult=10", "--set", "run.name=probe"]
    assert run.main(probe) == 0
    assert (f"model.pretrained: loaded 100/102 tensors from {path} (arch resnet18); classifier replaced: "
            f"365 -> 3 classes") in capsys.readouterr().out
    report = json.loads((tmp_path / "runs" / "probe" / "report.json").read_text())
    weights = inference_weights(contents.load(report["best_checkpoint"]))
    mapping = torchvision_name_map("resnet18")
    for their_key, tensor in theirs.state_dict().items():
        ours = weights["backbone." + mapping[their_key]]
        below = not their_key.startswith(("layer4.", "fc."))
        assert torch.equal(ours, tensor) == below, their_key  # frozen below layer4, trained from it on
    assert weights["backbone.head.fc.weight"].shape == (3, 512)

    assert run.main(probe) == 2  # the same run.name again: refused, not silently resumed
    assert "a run named 'probe' is already under" in capsys.readouterr().err
    assert run.main([*common, "--set", f"model.pretrained={tmp_path}/runs/probe", "--set", "run.name=all"]) == 0
    assert run.main([*common, "--set", f"model.pretrained={path}", "--set", "optim.trainable_from=layer9",
                     "--set", "run.name=typo"]) == 2  # refused before Ray Train starts
    assert "'optim.trainable_from': 'layer9' is not a stage of resnet18; stages: stem, layer1" in capsys.readouterr().err


def test_the_layers_that_retrain_keep_their_dropout():
    """Karpathy et al.'s "top layer" transfer retrains the classifier on fc7's output: fc7 is frozen, its
    dropout still drops (a frozen layer is one with no learning rate, as in Caffe's fine-tuning)."""
    model = create_model("video_slow_fusion", 4, width=0.0625, fc=16)
    freeze(model, "head")
    train_mode(model, "head")
    dropout = [m for m in model.backbone.stages["fc7"].modules() if isinstance(m, torch.nn.Dropout)]
    assert dropout and all(m.training for m in dropout)
    assert not any(p.requires_grad for p in model.backbone.stages["fc7"].parameters())
