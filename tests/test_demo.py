"""The built-in demo corpus and its shards."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest

from pipelines import demo_corpus
from pipelines.demo_shards import prepare_demo


def tree_digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo_corpus.make_demo_corpus(str(root), seed=0)
    return root


def test_corpus_is_deterministic_per_seed(corpus, tmp_path):
    demo_corpus.make_demo_corpus(str(tmp_path), seed=0)
    assert tree_digest(corpus) == tree_digest(tmp_path)
    same = demo_corpus._draw_job((0, "train", 5, 3, 256, 256))
    assert same == demo_corpus._draw_job((0, "train", 5, 3, 256, 256)) != demo_corpus._draw_job((1, "train", 5, 3, 256, 256))


def test_corpus_layout_and_balance(corpus):
    cats = (corpus / "categories.txt").read_text().split("\n")[:-1]
    assert len(cats) >= 8 and cats[0].split() == ["/b/beach", "0"]
    train = Counter(int(ln.rsplit(None, 1)[1]) for ln in (corpus / "train.txt").read_text().splitlines())
    val = Counter(int(ln.split()[1]) for ln in (corpus / "val.txt").read_text().splitlines())
    in_range = {k: v for k, v in train.items() if k < len(cats)}
    assert max(in_range.values()) >= 10 * min(in_range.values())
    assert len(set(val.values())) == 1 and len(val) == len(cats)
    assert all("/" not in ln.split()[0] for ln in (corpus / "val.txt").read_text().splitlines())
    assert all(len(ln.split()) == 1 for ln in (corpus / "test.txt").read_text().splitlines())
    assert 2000 <= sum(train.values()) + sum(val.values()) <= 5000


def test_classes_differ_in_what_they_show(corpus):
    """Learnable: per-class mean colours differ; not trivial: within-class spread is comparable."""
    from PIL import Image
    means = {}
    for line in (corpus / "val.txt").read_text().splitlines():
        name, label = line.split()
        arr = np.asarray(Image.open(corpus / "val_256" / name).convert("RGB"), dtype=float)
        means.setdefault(int(label), []).append(arr.reshape(-1, 3).mean(0))
    centroids = np.array([np.mean(v, 0) for _, v in sorted(means.items())])
    spread = np.mean([np.std(v, 0).mean() for v in means.values()])
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]]
    assert min(gaps) < 2 * spread < max(gaps)  # some classes overlap in colour, others do not


@pytest.fixture(scope="module")
def demo_shards(ray_cluster, corpus):
    return prepare_demo(str(corpus))


@pytest.mark.slow
def test_demo_shards_show_the_quarantine(demo_shards, corpus):
    manifests = demo_shards
    train = manifests["train"]
    assert train["quarantine_reasons"] == {"empty_file": 1, "label_out_of_range": 1, "missing_file": 1,
                                           "not_an_image": 1, "truncated_image": 1}
    assert train["entries_read"] == train["written"] + train["quarantined"]
    assert len(set(manifests["val"]["per_class_written"].values())) == 1
    assert manifests["test"]["unlabeled_written"] == manifests["test"]["entries_read"]
    classes = json.loads((corpus / "shards" / "train" / "classes.json").read_text())
    assert [c["count"] for c in classes["classes"]] == list(train["per_class_written"].values())
    # a second call finds everything present and does nothing
    assert prepare_demo(str(corpus))["train"]["elapsed_s"] == train["elapsed_s"]


@pytest.mark.slow
def test_training_reports_checkpoints_and_resumes(demo_shards, corpus, tmp_path, capsys):
    import torch

    from training import run

    common = ["--set", f"data.train_shards={corpus}/shards/train", "--set", f"data.val_shards={corpus}/shards/val",
              "--set", f"run.storage_path={tmp_path}", "--set", "run.name=demo-test", "--set", "optim.ema_decay=0.9"]
    assert run.main([*common, "--set", "run.epochs=2"]) == 0
    report = json.loads((tmp_path / "demo-test" / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    final = report["final"]
    assert final["val_images"] == 400 and final["top1_error"] < 0.6 and final["skipped_samples"] == 0
    assert {"loss", "loss1", "loss2", "images_per_s", "data_wait_fraction", "lr"} <= set(final)
    state = torch.load(f"{report['best_checkpoint']}/state.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "streams", "history"} <= set(state)
    assert int(state["ema"]["n_averaged"]) == state["step"]
    assert len(state["streams"]) == 2 and all(s["mode"] == "class-aware" for s in state["streams"])
    events = list((tmp_path / "demo-test" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert any(k.startswith("aux_heads") for k in state["model"])  # relay: the auxiliary head is saved too

    capsys.readouterr()
    assert run.main([*common, "--set", "run.epochs=3", "--resume", "demo-test"]) == 0
    assert re.search(r"^continuing from checkpoint checkpoint_\S+ \(epoch 2, its end\)$", capsys.readouterr().out,
                     re.MULTILINE)
    resumed = json.loads((tmp_path / "demo-test" / "report.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][:2] == report["history"]
    assert resumed["final"]["step"] == 3 * report["final"]["step"] // 2
    # the moving average was restored and kept going: one update per optimiser step, over both attempts
    state = torch.load(f"{resumed['best_checkpoint']}/state.pt", weights_only=True)
    if state["epoch"] == 2:
        assert int(state["ema"]["n_averaged"]) == resumed["final"]["step"]


def test_bad_training_arguments_fail_before_any_work(tmp_path, capsys):
    from training import run

    assert run.main(["--set", "optim.lrr=1"]) == 2
    assert run.main(["--set", f"run.storage_path={tmp_path}", "--resume", "nope"]) == 2
    assert run.main(["--set", f"data.train_shards={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "nope" in err and "no shards" in err


@pytest.mark.slow
def test_compiled_training_checkpoints_the_plain_model(demo_shards, corpus, tmp_path):
    import torch

    from training import run
    from training.config import from_dict
    from training.models import build_model

    assert run.main(["--set", f"data.train_shards={corpus}/shards/train", "--set",
                     f"data.val_shards={corpus}/shards/val", "--set", f"run.storage_path={tmp_path}",
                     "--set", "run.name=compiled", "--set", "run.epochs=1", "--set", "run.compile=true"]) == 0
    report = json.loads((tmp_path / "compiled" / "report.json").read_text())
    assert report["final"]["val_images"] == 400 and report["final"]["top1_error"] < 0.8
    state = torch.load(f"{report['best_checkpoint']}/state.pt", weights_only=True)
    model = build_model(from_dict(state["config"]))
    model.load_state_dict(state["model"])  # strict: no torch.compile wrapper prefixes in the saved names
