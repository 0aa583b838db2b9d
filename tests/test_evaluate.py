"""training/evaluate.py: protocols, exact metrics, fusion without leakage, the three outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_shards
from pipelines.online.catalog import Catalog
from pipelines.online.streams import SequentialStream
from pipelines.online.transforms import EvalTransform
from training import evaluate, evaluation
from training.checkpoint.lookup import CheckpointError, resolve_checkpoint
from training.config import load, to_dict
from training.models import build_model

pytestmark = pytest.mark.slow
COUNTS = [7, 6, 5, 6]


@pytest.fixture(scope="module")
def setup(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_shards(root / "val", COUNTS, shard_samples=4, size=48)
    paths = []
    for seed in range(2):
        cfg = load(None, ["model.num_classes=4", f"run.seed={seed}", "model.mode=bp"])
        torch.manual_seed(seed)
        model = build_model(cfg)
        path = root / f"model{seed}.pt"
        torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
        paths.append((str(path), model))
    return root, paths


def run(root, checkpoints, *extra):
    out = root / f"out-{abs(hash(extra)) % 10**8}-{len(checkpoints)}"
    argv = [arg for c in checkpoints for arg in ("--checkpoint", c)]
    assert evaluate.main([*argv, "--shards", str(root / "val"), "--size", "32", "--out", str(out), *extra]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_center_crop_metrics_equal_a_direct_computation(setup):
    root, paths = setup
    out, metrics = run(root, [paths[0][0]], "--protocol", "center", "--scales", "36")
    model = paths[0][1].export().eval()
    transform = EvalTransform("center", size=32, resize=36)
    hits, n = 0, 0
    with torch.no_grad():
        for draw in SequentialStream(Catalog.load(str(root / "val"))):
            hits += int(model(transform(draw.members["jpg"])).argmax(1).item() == draw.cls)
            n += 1
    got = metrics["models"][paths[0][0]]
    assert n == got["images"] == sum(COUNTS) and got["top1_error"] == pytest.approx(1 - hits / n)
    assert {c: v["count"] for c, v in got["per_class"].items()} == {str(i): n for i, n in enumerate(COUNTS)}
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == n and all(len(ln.split()) == 1 + min(5, len(COUNTS)) for ln in lines)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("protocol,views", [("ten_crop", "36"), ("dense", "40 48"), ("multi_view", "36 44"),
                                            ("multi_crop", "36 40"), ("multi_crop_dense", "36 40"),
                                            ("googlenet_144", "36 40 44 48")])
def test_every_protocol_runs(setup, protocol, views):
    root, paths = setup
    _, metrics = run(root, [paths[0][0]], "--protocol", protocol, "--scales", *views.split())
    assert metrics["fused"]["images"] == sum(COUNTS) and 0 <= metrics["fused"]["top1_error"] <= 1


def test_fusions_and_learned_weights_are_fit_only_on_the_heldout_slice(setup):
    root, paths = setup
    both = [p for p, _ in paths]
    _, average = run(root, both, "--fusion", "average", "--scales", "36")
    _, product = run(root, both, "--fusion", "product", "--scales", "36")
    _, learned = run(root, both, "--fusion", "learned", "--heldout", "0.3", "--scales", "36")
    assert average["fusion_weights"] == product["fusion_weights"] == [0.5, 0.5]
    assert average["heldout_for_fusion"] == 0 and average["fused"]["images"] == sum(COUNTS)
    held = learned["heldout_for_fusion"]
    assert 0 < held < sum(COUNTS) and learned["fused"]["images"] == sum(COUNTS) - held
    assert all(m["images"] == sum(COUNTS) - held for m in learned["models"].values())
    assert sum(learned["fusion_weights"]) == pytest.approx(1.0) and len(learned["fusion_weights"]) == 2
    # every fusion mode beside every single model, on the same images
    assert set(learned["fusions"]) == {"average", "product", "learned"} and set(average["fusions"]) == {
        "average", "product"}
    assert {f["images"] for f in learned["fusions"].values()} == {sum(COUNTS) - held}
    assert learned["fusions"]["learned"]["top1_error"] == learned["fused"]["top1_error"]
    assert average["fusions"]["product"] == {**product["fused"], "weights": [0.5, 0.5]}


def test_fuse_functions():
    probs = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.5, 0.5]]])  # (images, models, classes)
    avg, _ = evaluation.fuse(np.log(probs), "average", np.zeros(2, bool), np.array([0, 1]))
    assert np.allclose(np.exp(avg), [[0.45, 0.55], [0.55, 0.45]])  # the posteriors' mean, in log space
    prod, _ = evaluation.fuse(np.log(probs), "product", np.zeros(2, bool), np.array([0, 1]))
    assert prod.argmax(1).tolist() == [1, 0]


def test_bad_paths_are_refused_by_name_before_any_work(setup, tmp_path, capsys):
    root, paths = setup
    good = paths[0][0]
    cases = [([good, str(tmp_path / "missing.pt")], str(root / "val"), "missing.pt: neither a state.pt"),
             ([str(tmp_path)], str(root / "val"), f"--checkpoint {tmp_path}: neither"),
             ([good], str(tmp_path / "noshards"), "no index.json in")]
    for checkpoints, shards, message in cases:
        argv = [arg for c in checkpoints for arg in ("--checkpoint", c)]
        out = tmp_path / "out"
        assert evaluate.main([*argv, "--shards", shards, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "metrics.json").exists()


def test_cpu_actors_that_would_hold_every_cpu_are_refused(setup, tmp_path, capsys):
    root, paths = setup  # the cluster has 2 CPUs: two CPU actors would leave the read tasks none
    out = tmp_path / "out"
    argv = ["--checkpoint", paths[0][0], "--shards", str(root / "val"), "--out", str(out), "--actors", "2"]
    assert evaluate.main(argv) == 2
    assert "--actors 2: CPU model actors would hold all 2 CPUs" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_a_file_that_is_not_a_checkpoint_is_one_line_before_ray(setup, tmp_path, capsys):
    root, _ = setup
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"  # what sorts last in a Ray Train run folder
    snapshot.write_text('{"checkpoints": []}')
    out = tmp_path / "out"
    assert evaluate.main(["--checkpoint", str(snapshot), "--shards", str(root / "val"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--checkpoint {snapshot}: not a checkpoint written by training/run.py" in err
    assert not out.exists()


def test_a_run_folder_gives_its_best_checkpoint(setup, tmp_path):
    _, paths = setup
    state = torch.load(paths[0][0], weights_only=True)
    run_folder = tmp_path / "runs [x]" / "demo-run?"  # glob characters in a user path are just characters
    for name, error in [("checkpoint_2026-01-01_00-00-01", 0.30), ("checkpoint_2026-01-01_00-00-02", 0.25),
                        ("checkpoint_2026-01-01_00-00-03", 0.28)]:
        (run_folder / name).mkdir(parents=True)
        history = [{"epoch": 0, "top1_error": 0.9}, {"epoch": 1, "top1_error": error}]
        torch.save({**state, "history": history}, run_folder / name / "state.pt")
    (run_folder / "checkpoint_manager_snapshot.json").write_text("{}")
    path, _, note = resolve_checkpoint(str(run_folder))
    assert path == str(run_folder / "checkpoint_2026-01-01_00-00-02" / "state.pt")
    assert "checkpoint_2026-01-01_00-00-02 (epoch 2, top-1 error 25.00%" in note
    # a finished run's report.json names its best checkpoint: that one is taken
    named = run_folder / "checkpoint_2026-01-01_00-00-03"
    (run_folder / "report.json").write_text(json.dumps({"best_checkpoint": str(named)}))
    assert resolve_checkpoint(str(run_folder))[0] == str(named / "state.pt")
    path, state, note = resolve_checkpoint(str(named))
    assert (path, note) == (str(named / "state.pt"), None) and state["history"][-1]["top1_error"] == 0.28


def test_views_default_to_what_the_checkpoint_was_trained_at():
    demo = load(None, ["data.size=64", "data.eval_resize=73"])
    assert evaluation.view_geometry([demo], "center", None, None) == (64, (73,))
    assert evaluation.view_geometry([demo], "dense", None, None) == (64, (73, 110, 146))
    assert evaluation.view_geometry([load(None)], "multi_view", None, None) == (224, (256, 320))
    assert evaluation.view_geometry([demo], "center", 56, [64]) == (56, (64,))
    with pytest.raises(CheckpointError, match="trained at different sizes"):
        evaluation.view_geometry([demo, load(None)], "center", None, None)


def test_a_damaged_shard_is_skipped_and_counted_not_fatal(setup, tmp_path, capsys):
    """Row 13 of the bad-input issue: a shard damaged in place (its size unchanged, so the up-front check
    passes) aborted the whole evaluation with a TypeError; now its whole samples are scored, the rest
    counted, and the threshold decides the exit code.  A stale index (nsamples too small) is named too."""
    import shutil

    from common.storage import Location
    from pipelines.online.tar_stream import ShardReader

    root, paths = setup
    val = tmp_path / "val"
    shutil.copytree(root / "val", val)
    reader = ShardReader(Location.parse(str(val)), "c0000-00000.tar")
    offsets = [reader.next().offset for _ in range(4)]
    reader.close()
    with open(val / "c0000-00000.tar", "r+b") as f:  # the third sample's first header: a bad checksum
        f.seek(offsets[2])
        f.write(b"\xff" * 512)
    index = json.loads((val / "index.json").read_text())
    stale = next(s for s in index["shardlist"] if s["url"] == "c0001-00000.tar")
    stale["nsamples"] -= 1  # one more sample in the tar than the index says
    (val / "index.json").write_text(json.dumps(index))
    argv = ["--checkpoint", paths[0][0], "--shards", str(val), "--size", "32", "--scales", "36"]

    assert evaluate.main([*argv, "--out", str(tmp_path / "strict")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evaluate.py: failed: 2 of 23 listed samples could not be read (8.7%), above "
                              "--max-skipped-fraction 0.01")
    assert evaluate.main([*argv, "--out", str(tmp_path / "lenient"), "--max-skipped-fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "2 shard(s) not as index.json lists them, 2 of 23 listed samples not scored" in out
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert metrics["skipped_samples"] == 2 and metrics["images"] == sum(COUNTS) - 2
    assert metrics["shards_not_as_listed"] == ["c0000-00000.tar (listed 4, read 2)",
                                               "c0001-00000.tar (listed 3, read 4)"]


def test_dense_evaluation_averages_the_class_score_map_before_the_softmax(tmp_path):
    """VGG: "the class score map is spatially averaged"; the soft-max posteriors of the image and its mirror
    (and of every scale) are then averaged."""
    from conftest import encode, scene
    from training.inference import Predictor, cut_views

    cfg = load(None, ["model.name=vgg_a", "model.num_classes=4", "model.options={input_size: 32}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # scores far from uniform, where the order of mean and softmax shows
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(1000)
    path = tmp_path / "vgg.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
    jpegs = [encode(scene(i, 80, 64)) for i in range(2)]
    batch = {"__key__": np.array(["a", "b"], dtype=object), "url": np.array(["u", "u"], dtype=object),
             "jpg": np.array(jpegs, dtype=object), "cls": np.array([b"0", b"1"], dtype=object),
             "json": np.array([b"{}", b"{}"], dtype=object), "attr": np.array([b"", b""], dtype=object),
             "labels": np.array([b"", b""], dtype=object)}
    views = cut_views(batch, "dense", (64, 96), 32)
    predictor = Predictor([str(path)], "dense", (64, 96), use_gpu=False, batch_size=4)
    net = predictor.models[0]
    with torch.no_grad():
        got, attributes = predictor.log_probs(0, views)
        got = got.exp()
        assert attributes is None  # no attribute head
        expected, softmax_first = [], []
        for row in range(2):
            per_view, other = [], []
            for i in range(2):
                x = predictor.normalizers[0](torch.from_numpy(views[f"views{i}"][row]))
                maps = net.backbone.forward_dense(torch.cat([x, x.flip(-1)]))
                assert maps.shape[-1] > 1  # a real map, not one position
                per_view.append(maps.mean((2, 3)).softmax(1))
                other.append(maps.softmax(1).mean((2, 3)))
            expected.append(torch.cat(per_view).mean(0))
            softmax_first.append(torch.cat(other).mean(0))
    torch.testing.assert_close(got, torch.stack(expected))
    assert not torch.allclose(got, torch.stack(softmax_first))


def test_trainer_evaluate_and_predict_rank_alike_at_extreme_logits(setup, tmp_path, capsys):
    """Logits of about +-2000, where float32 softmax outputs are exactly 0 past the first class: the
    trainer's validation, evaluate.py and predict.py give the same top-1 and top-5 for every image (and
    evaluate.py's predictions.csv the same five classes as predict.py)."""
    from conftest import write_shards
    from training import prediction
    from training.validation import evaluate_rank

    classes = 8
    write_shards(tmp_path / "val", [3] * classes, shard_samples=3, size=48)
    cfg = load(None, [f"model.num_classes={classes}", "model.mode=bp", "data.size=32", "data.eval_resize=36",
                      f"data.val_shards={tmp_path / 'val'}", "data.loader_workers=0", "data.batch_size=5"])
    torch.manual_seed(0)
    model = build_model(cfg)
    views = torch.stack([EvalTransform("center", size=32, resize=36)(d.members["jpg"])[0]
                         for d in SequentialStream(Catalog.load(str(tmp_path / "val")))])
    layer = model.backbone.classifier()[1]
    with torch.no_grad():
        layer.weight.mul_(2000 / model.eval().backbone(views).abs().max())
        layer.bias.zero_()
        probs = model.backbone(views).softmax(1)
    assert ((probs == 0).sum(1) >= 5).all()  # ranks 2-5 of float32 probabilities would be ties
    path = tmp_path / "extreme.pt"
    names = [f"class{i}" for i in range(classes)]
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "class_names": names, "history": []}, path)

    counts, _ = evaluate_rank(model, cfg, 0, 1, torch.device("cpu"))
    out = tmp_path / "out"
    assert evaluate.main(["--checkpoint", str(path), "--shards", str(tmp_path / "val"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["models"][str(path)]
    n = classes * 3
    assert int(counts[2]) == metrics["images"] == n
    assert (1 - counts[0] / n, 1 - counts[1] / n) == (pytest.approx(metrics["top1_error"]),
                                                      pytest.approx(metrics["top5_error"]))
    assert "model, center: top-1 error " in capsys.readouterr().out  # one model: not "fused"
    rows = dict(line.split(" ", 1) for line in (out / "predictions.csv").read_text().splitlines())
    scorer = prediction.Model(str(path))
    for draw in SequentialStream(Catalog.load(str(tmp_path / "val"))):
        ranked, _, _ = scorer.predict(scorer.transform.views(draw.members["jpg"])[0], 5, "auto")
        assert [names.index(c) for c, _ in ranked] == [int(c) for c in rows[draw.key].split()], draw.key


def test_a_published_model_file_is_scored_with_the_release_preprocessing(setup, tmp_path, capsys):
    """A CSAILVision-format file (a state_dict wrapper with arch, `module.` keys) scores the val shards
    as torchvision's network does on the release's views (224 centre crop of a 256 shorter side); its
    class names come from the categories file and must be the shards'."""
    from conftest import csail_file

    root, _ = setup
    theirs, path = csail_file(tmp_path, "resnet18", classes=len(COUNTS))
    categories = tmp_path / "categories_places365.txt"
    categories.write_text("".join(f"class{i} {i}\n" for i in range(len(COUNTS))))
    out = tmp_path / "out"
    argv = ["--checkpoint", path, "--shards", str(root / "val"), "--out", str(out)]
    assert evaluate.main([*argv, "--categories", str(categories)]) == 0
    assert f"loaded 102/102 tensors from {path} (arch resnet18)" in capsys.readouterr().out
    got = json.loads((out / "metrics.json").read_text())["models"][path]
    transform = EvalTransform("center", size=224, resize=256)
    with torch.no_grad():
        hits = [int(theirs(transform(d.members["jpg"])).argmax(1)) == d.cls
                for d in SequentialStream(Catalog.load(str(root / "val")))]
    assert got["top1_error"] == pytest.approx(1 - np.mean(hits))
    categories.write_text("".join(f"/x/other{i} {i}\n" for i in range(len(COUNTS))))
    assert evaluate.main([*argv, "--categories", str(categories)]) == 2
    assert "was trained with class 0 = '/x/other0', but in" in capsys.readouterr().err
