"""Training configuration and learning-rate schedules."""

import os

import pytest
import torch

from training.config import ConfigError, load
from training.optim import make_optimizer, make_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_recipe_with_overrides():
    cfg = load(os.path.join(ROOT, "configs", "train", "demo.yaml"), ["optim.lr=0.2", "run.workers=1", "model.options={width: 0.5}",
                                                           "data.jitter=[300, 400]"])
    assert (cfg.optim.lr, cfg.run.workers, cfg.model.options, cfg.data.jitter) == (0.2, 1, {"width": 0.5}, (300, 400))
    assert cfg.model.name == "simple_net" and cfg.data.sampling == "class-aware" and cfg.model.mode == "relay"


@pytest.mark.parametrize("override,name", [("optim.lrr=1", "optim.lrr"), ("modle.name=x", "modle"),
                                           ("run.epochs.x=1", "run.epochs")])
def test_unknown_keys_are_refused_by_name(override, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load(None, [override])


def schedule(kind, **kw):
    cfg = load(None, [f"optim.schedule={kind}", *[f"optim.{k}={v}" for k, v in kw.items()]]).optim
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, cfg)
    return opt, make_scheduler(opt, cfg, steps_per_epoch=10, epochs=5)


def test_cosine_with_warmup():
    opt, sched = schedule("cosine", lr=1.0, warmup_epochs=1)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_batch()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_plateau_divides_by_ten_when_accuracy_stalls():
    opt, sched = schedule("plateau", lr=0.01, patience=1)
    for acc in (0.5, 0.6, 0.6, 0.6):
        opt.step()
        sched.step_epoch(acc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_multistep_and_no_decay_on_norms_and_biases():
    opt, sched = schedule("multistep", lr=1.0, milestones="[2, 4]", decay_norm_and_bias=False)
    for _ in range(4):
        opt.step()
        sched.step_epoch(0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert [p.ndim for p in opt.param_groups[1]["params"]] == [1]


RECIPES = sorted(f"{kind}/{n[:-5]}" for kind in ("train", "video", "course")
                 for n in os.listdir(os.path.join(ROOT, "configs", kind)) if n.endswith(".yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_builds_its_model(name):
    from training.models import build_model
    from training.pretrained import warm_start

    cfg = load(os.path.join(ROOT, "configs", f"{name}.yaml"))
    model = build_model(cfg)
    if not cfg.model.pretrained:  # (weights files are made elsewhere)
        warm_start(model, cfg)
    assert model.backbone.num_classes == cfg.model.num_classes
    if name.startswith("train/finetune"):  # the linear probe trains the classifier alone, then everything trains
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == ({"backbone.head.fc.weight", "backbone.head.fc.bias"} if name == "train/finetune_resnet50"
                             else {n for n, _ in model.named_parameters()})
    if name.startswith("course/"):  # part 1 has neither batch-norm nor dropout; 2 and 4 have both
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert (not norms) == (name == "course/part1")
        assert (model.attribute_head is not None) == (name == "course/part4")
    if name.startswith("train/wm_model"):
        mode = {"bp": "bp", "loss12": "loss12_bp", "relay": "relay"}[name.rsplit("_", 1)[1]]
        assert model.mode == mode and cfg.data.sampling == "class-aware"
        assert (cfg.data.crop, cfg.data.jitter, cfg.data.size) == ("scale_jitter", (256, 256), 224)  # 256xN, 224


def test_the_seeds_three_wm_a_recipes_differ_in_the_gradient_routing_alone():
    """bp vs loss1&2 BP vs relay BP, the seed's table: the same data, optimiser and schedule; loss12 and
    relay with the same branch and loss weight (the family defaults, 0.3 and 1.0, would change two things)."""
    from training.config import to_dict

    def flat(name):
        cfg = to_dict(load(os.path.join(ROOT, "configs", "train", f"wm_model_a_{name}.yaml")))
        return {f"{section}.{key}": value for section, values in cfg.items() for key, value in values.items()}

    bp, loss12, relay = flat("bp"), flat("loss12"), flat("relay")
    assert {k for k in relay if relay[k] != loss12[k]} == {"model.mode"}
    assert {k for k in relay if relay[k] != bp[k]} == {"model.mode", "model.branch", "model.aux_head",
                                                       "model.aux_weight"}
    assert bp["model.mode"] == "bp" and loss12["model.aux_weight"] == relay["model.aux_weight"] == 1.0


def test_vgg_d_warm_starts_from_a_saved_vgg_a(tmp_path):
    from training.config import to_dict
    from training.models import build_model
    from training.pretrained import warm_start

    small = ["model.num_classes=5", "model.options={input_size: 64}"]
    a_cfg = load(None, ["model.name=vgg_a", *small])
    a = build_model(a_cfg)
    torch.save({"model": a.state_dict(), "config": to_dict(a_cfg)}, tmp_path / "state.pt")
    d_cfg = load(None, ["model.name=vgg_d", *small, f"model.init_from={tmp_path}/state.pt"])
    d = build_model(d_cfg)
    warm_start(d, d_cfg)
    assert torch.equal(d.backbone.stages["conv3"][2].weight, a.backbone.stages["conv3"][2].weight)
    assert torch.equal(d.backbone.head.fc[0].weight, a.backbone.head.fc[0].weight)


def test_ema_averages_weights_and_is_what_checkpoints_export():
    from training.checkpoint.contents import inference_weights
    from training.optim import make_ema

    model = torch.nn.Linear(2, 1, bias=False)
    ema = make_ema(model, 0.9)
    seen = []
    for value in (1.0, 2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        seen.append(ema.module.weight[0, 0].item())
    # first update copies; then ema = 0.9 * ema + 0.1 * w
    assert seen == pytest.approx([1.0, 0.9 * 1.0 + 0.1 * 2.0, 0.9 * 1.1 + 0.1 * 4.0])
    state = {"model": model.state_dict(), "ema": ema.state_dict()}
    assert float(inference_weights(state)["weight"][0, 0]) == pytest.approx(seen[-1])
    assert float(inference_weights({"model": model.state_dict(), "ema": None})["weight"][0, 0]) == 4.0
    assert make_ema(model, 0.0) is None
    with pytest.raises(ValueError, match="ema_decay"):
        make_ema(model, 1.5)


def test_amp_dtype_is_checked_when_the_config_loads():
    assert load(None, ["run.amp_dtype=float16"]).run.amp_dtype == "float16"
    with pytest.raises(ConfigError, match="run.amp_dtype must be bfloat16 or float16"):
        load(None, ["run.amp_dtype=fp8"])


def test_console_lines():
    from training.metrics_sink import epoch_line, progress_line

    assert progress_line(2, 90, 1200, 5004, 3980.4, 4.21349, 0.031, 300.0) == \
        "epoch 3/90 step 1200/5004 (24%): 3,980 img/s, loss 4.2135, data wait 3%, epoch ETA 15m51s"
    assert progress_line(0, 1, 1, 5004, 1.0, 1.0, 0.0, 10.0).endswith("epoch ETA 13h53m")
    assert progress_line(0, 1, 25, 25, 1.0, 1.0, 0.0, 10.0).endswith("epoch ETA 0s")
    metrics = {"epoch": 0, "top1_error": 0.5025, "top5_error": 0.0775, "val_images": 400, "loss": 3.61214,
               "images_per_s": 362.2, "data_wait_fraction": 0.04, "lr": 0.05}
    assert epoch_line(metrics, 8) == ("epoch 1/8 done: top-1 error 50.25%, top-5 error 7.75% (400 val images), "
                                      "loss 3.6121, 362 img/s, data wait 4%, lr 0.05")


def test_decoding_on_the_gpu_is_the_loaders_and_not_ray_datas():
    assert load(None, ["data.decode=hybrid"]).data.decode == "hybrid"
    for decode in ("device", "hybrid"):
        with pytest.raises(ConfigError, match=f"data.decode': {decode} decoding runs in the training worker's own"):
            load(None, ["data.ingest=ray_data", f"data.decode={decode}"])
    with pytest.raises(ConfigError, match="data.decode' must be one of workers, device, hybrid"):
        load(None, ["data.decode=gpu"])


@pytest.mark.parametrize("name, scales", [("a", (256, 256)), ("a_lrn", (256, 256)), ("b", (256, 256)),
                                          ("c", (256, 512)), ("d", (256, 512)), ("e", (256, 512))])
def test_vgg_recipes_train_at_the_papers_scales(name, scales):
    """VGG's Table 3: A, A-LRN and B at a fixed S = 256 (a 224 crop of the shorter side 256), C, D and E
    with S jittered in [256, 512]."""
    cfg = load(os.path.join(ROOT, "configs", "train", f"vgg_{name}.yaml"))
    assert (cfg.model.name, cfg.data.crop, cfg.data.jitter, cfg.data.size) == (f"vgg_{name}", "scale_jitter",
                                                                                scales, 224)


@pytest.mark.parametrize("depth", [18, 34])
def test_the_plain_vs_residual_recipes_differ_in_the_shortcuts_alone(depth):
    """The ResNet paper's Table 2: plain-N against ResNet-N with option A shortcuts, trained alike, with the
    same parameters."""
    from training.config import to_dict
    from training.models import build_model

    plain, residual = (load(os.path.join(ROOT, "configs", "train", f"{n}.yaml"))
                       for n in (f"plain{depth}", f"resnet{depth}_option_a"))
    a, b = to_dict(plain), to_dict(residual)
    assert (a.pop("model"), b.pop("model")) and a == b
    assert (plain.model.name, residual.model.name, residual.model.options) == (f"plain{depth}", f"resnet{depth}",
                                                                               {"shortcut_type": "A"})
    count = [sum(p.numel() for p in build_model(c).parameters()) for c in (plain, residual)]
    assert count[0] == count[1]
    assert to_dict(load(os.path.join(ROOT, "configs", "train", f"resnet{depth}.yaml")))["optim"] == a["optim"]
