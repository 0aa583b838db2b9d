"""Bad input to training/run.py and tuning/search.py, second pass: settings that diverge, hang, escape the
storage folder or raise tracebacks are refused before Ray starts (exit 2, one line); a run whose loss
turns non-finite stops with one line of ours and exit 1, keeping no checkpoint of the diverged weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, write_shards
from refusals import check_refused, join_a_gone_cluster
from training.config import load, to_dict
from training.stopped_run import STOPPED_FILE, all_finite


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """3-class training and validation shards, a base config on them, and search spaces with bad values."""
    root = tmp_path_factory.mktemp("bad_training")
    write_shards(root / "train", [6, 5, 4], shard_samples=4)
    write_shards(root / "val", [2, 2, 2], shard_samples=2)
    cfg = load(None, ["model.num_classes=3", "model.mode=bp", f"data.train_shards={root / 'train'}",
                      f"data.val_shards={root / 'val'}", "run.workers=1", "data.size=16", "data.eval_resize=18"])
    (root / "base.yaml").write_text(json.dumps(to_dict(cfg)))
    lr = "params:\n  optim.lr: {uniform: [0.01, 0.1]}\n"
    spaces = {"log0": "params:\n  optim.lr: {loguniform: [0, 0.1]}\n", "asha5": lr + "asha: 5\n",
              "asha_half": lr + "asha: {reduction_factor: 1}\n", "set_list": lr + "set: [1, 2]\n",
              "warm_string": "params:\n  model.name: {choice: [simple_net]}\ndepth: model.name\nwarm_start: 'false'\n",
              "nan_range": "params:\n  optim.lr: {uniform: [.nan, 0.1]}\n", "lr": lr}
    for name, text in spaces.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "a_file").write_text("not a folder")
    (root / "empty.pth").write_bytes(b"")
    return root


RUN = ["--config", "{root}/base.yaml", "--set"]
SEARCH = ["--config", "{root}/base.yaml", "--space"]
# (row, tool, argv with {root} for the module's folder, the message the one error line must hold)
CASES = [
    ("optim.lr .inf (it trained to loss nan, exit 0)", "run", RUN + ["optim.lr=.inf"],
     "config key 'optim.lr' must be a finite number, got inf"),
    ("optim.weight_decay .inf", "run", RUN + ["optim.weight_decay=.inf"],
     "config key 'optim.weight_decay' must be a finite number, got inf"),
    ("model.aux_weight .nan", "run", RUN + ["model.aux_weight=.nan"],
     "config key 'model.aux_weight' must be a finite number, got nan"),
    ("optim.lr 1e999 (YAML's 1e-3 form, overflowing)", "run", RUN + ["optim.lr=1e999"],
     "config key 'optim.lr' must be a finite number, got inf"),
    ("model.pretrained an empty file (an IndexError while formatting the error)", "run",
     RUN + ["model.pretrained={root}/empty.pth"],
     "model.pretrained: {root}/empty.pth is empty (0 bytes): a download that did not finish?"),
    ("data.eval_resize below data.size (validation on black borders)", "run", RUN + ["data.eval_resize=12"],
     "config key 'data.eval_resize' (12) must be >= data.size (16)"),
    ("run.name with ../ (the run was written outside run.storage_path)", "run", RUN + ["run.name=../../escaped_run"],
     "config key 'run.name' must be one folder name (no '/', not '.' or '..'), got '../../escaped_run'"),
    ("run.name ..", "run", RUN + ["run.name=.."], "config key 'run.name' must be one folder name"),
    ("run.workers above this machine's CPUs (it waited forever)", "run", RUN + ["run.workers=64"],
     "64 Train worker(s) asks for 64 x {{CPU: 1}}, and this machine can hold"),
    ("run.gpu on a machine without one (it waited forever)", "run", RUN + ["run.gpu=true"],
     "asks for {{CPU: 1, GPU: 1}}, and this machine can hold 0 at most"),
    ("data.color_pca without color_pca.json (it retried for 120 s, forever with max_failures -1)", "run",
     RUN + ["data.color_pca=true", "--set", "run.max_failures=-1"],
     "config key 'data.color_pca': {root}/train/color_pca.json is missing"),
    ("data.jitter [a, b] (a TypeError traceback)", "run", RUN + ["data.jitter=[a,b]"],
     "config key 'data.jitter[0]' expects int, got 'a'"),
    ("data.jitter [1, 2, 3] (a ValueError traceback)", "run", RUN + ["data.jitter=[1,2,3]"],
     "config key 'data.jitter' expects 2 values, got [1, 2, 3]"),
    ("optim.milestones [a]", "run", RUN + ["optim.milestones=[a]"],
     "config key 'optim.milestones[0]' expects int, got 'a'"),
    ("run.storage_path under /proc (ActorDiedError with no reason)", "run", RUN + ["run.storage_path=/proc/runs"],
     "config key 'run.storage_path': output location /proc/runs is not writable"),
    ("run.storage_path a file", "run", RUN + ["run.storage_path={root}/a_file"],
     "config key 'run.storage_path': output location {root}/a_file is not writable"),
    ("search: loguniform from 0 (it failed after Ray started)", "search", SEARCH + ["{root}/log0.yaml"],
     "log0.yaml: params.optim.lr.loguniform needs low > 0, got [0, 0.1]"),
    ("search: a NaN range end", "search", SEARCH + ["{root}/nan_range.yaml"],
     "nan_range.yaml: params.optim.lr.uniform must be [low, high] with low < high"),
    ("search: asha: 5 (a raw traceback)", "search", SEARCH + ["{root}/asha5.yaml"],
     "asha5.yaml: asha must be a mapping of keys to values, got 5"),
    ("search: an ASHA reduction factor of 1", "search", SEARCH + ["{root}/asha_half.yaml"],
     "asha_half.yaml: asha.reduction_factor must be a whole number >= 2, got 1"),
    ("search: set: [1, 2] (a raw traceback)", "search", SEARCH + ["{root}/set_list.yaml"],
     "set_list.yaml: set must be a mapping of keys to values, got [1, 2]"),
    ("search: warm_start: 'false' (recorded as True)", "search", SEARCH + ["{root}/warm_string.yaml"],
     "warm_string.yaml: warm_start must be true or false, got 'false'"),
]


@pytest.mark.parametrize("row,tool,argv,message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_any_work(world, tmp_path, capsys, row, tool, argv, message):
    if "run.gpu" in row and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check_refused(tool, argv, message, world, tmp_path / "out", capsys)
    assert not (world.parent / "escaped_run").exists()


@pytest.mark.parametrize("how", ["recorded", "RAY_ADDRESS"])
@pytest.mark.parametrize("tool,argv", [("run", RUN + ["run.epochs=1"]), ("search", SEARCH + ["{root}/lr.yaml"])],
                         ids=["run", "search"])
def test_a_cluster_that_no_longer_runs_is_refused_not_waited_for(world, tmp_path, capsys, monkeypatch, how, tool,
                                                                  argv):
    """Ray's own ray.init() retries a dead cluster's GCS without end, printing nothing on a quiet console."""
    message = join_a_gone_cluster(monkeypatch, tmp_path / "ray-temp", how)
    check_refused(tool, argv, message, world, tmp_path / "out", capsys)


def test_yaml_exponents_without_a_dot_are_numbers():
    """YAML 1.1 reads `1e-3` as a string: `--set optim.lr=1e-3` was refused as not a float."""
    assert load(None, ["optim.lr=1e-3", "optim.weight_decay=5E-4"]).optim.lr == 0.001


def test_a_non_finite_loss_on_any_rank_is_seen_by_every_rank_alike():
    assert all_finite({"loss": torch.tensor(2.5, dtype=torch.float64)}, 1, torch.device("cpu"))
    for bad in (math.nan, math.inf):
        assert not all_finite({"loss": torch.tensor(1.0), "aux": torch.tensor(bad)}, 1, torch.device("cpu"))


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_exit_1(world, tmp_path):
    """optim.lr=1e30 (finite, in range): the loss turns NaN; the run said 'loss nan', 90% error and a "best
    checkpoint" with exit 0.  Now: no retry (max_failures would repeat it), exit 1, the reason in one line,
    and every checkpoint kept holds finite weights."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [sys.executable, os.path.join(ROOT, "training", "run.py"), "--config", str(world / "base.yaml"),
            "--set", "optim.lr=1e30", "--set", "run.epochs=3", "--set", "run.max_failures=-1",
            "--set", f"run.storage_path={tmp_path}", "--set", "run.name=diverged"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("run.py:")]
    assert line.startswith("run.py: stopped: the training loss became NaN or infinite in epoch ")
    assert "start again with a lower optim.lr" in line
    assert not any(" epochs" in out and "after" in out or out.startswith("best checkpoint")
                   for out in done.stdout.splitlines())  # no result is claimed
    assert (tmp_path / "diverged" / STOPPED_FILE).exists() and not (tmp_path / "diverged" / "report.json").exists()
    for state in (tmp_path / "diverged").glob("checkpoint_*/state.pt"):
        weights = torch.load(state, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), state


def test_a_class_without_training_samples_is_named():
    """It trained silently, the class never seen."""
    assert classes_without_samples_in([6, 0, 4]) == (
        "warning: data.train_shards has no sample of 1 of its 3 classes: class1; the model will never see them")
    assert classes_without_samples_in([6, 5, 4]) is None


def classes_without_samples_in(counts: list[int]) -> str | None:
    import tempfile

    from training.preflight import classes_without_samples, load_catalog

    with tempfile.TemporaryDirectory() as folder:
        write_shards(folder, counts, shard_samples=4)
        return classes_without_samples(load_catalog("data.train_shards", folder))


@pytest.mark.slow
def test_ctrl_c_during_training_says_where_the_checkpoints_are_and_how_to_resume(world, tmp_path):
    """Ctrl-C ended the run with exit 1 and no line of ours."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [sys.executable, os.path.join(ROOT, "training", "run.py"), "--config", str(world / "base.yaml"),
            "--set", "run.epochs=100", "--set", f"run.storage_path={tmp_path}", "--set", "run.name=interrupted"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first epoch's checkpoint is written before its line
        if line.startswith("epoch 1/100 done"):
            break
    proc.send_signal(signal.SIGINT)
    started = time.time()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    [line] = [line for line in err.splitlines() if line.startswith("run.py:")]
    assert line == (f"run.py: interrupted; its checkpoints are in {tmp_path}/interrupted: continue with python "
                    f"training/run.py --resume interrupted --set run.storage_path={tmp_path}")
    assert list((tmp_path / "interrupted").glob("checkpoint_*")) and time.time() - started < 120
