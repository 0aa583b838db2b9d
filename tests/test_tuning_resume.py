"""A whole Tune experiment over Train runs: the driver is SIGKILLed mid-run, `--resume` finishes it,
and tuning/analyze.py reads it back (table, runnable best.yaml, plots)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import write_shards

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mid_run(experiment) -> bool:
    """Tune has saved its state and a trial's Train run has registered its first checkpoint (of 3):
    the snapshot, written after the checkpoint folder, is what a restored run resumes from."""
    return any(experiment.glob("experiment_state-*.json")) and any(
        experiment.glob("train/trial-*/checkpoint_manager_snapshot.json"))


def test_killed_experiment_resumes_to_completion_and_analyzes(tmp_path):
    write_shards(tmp_path / "train", [24, 16, 8], shard_samples=8)
    write_shards(tmp_path / "val", [6, 6, 6], shard_samples=6)
    base = {"data": {"train_shards": str(tmp_path / "train"), "val_shards": str(tmp_path / "val"), "batch_size": 8,
                     "loader_workers": 0, "size": 32, "eval_resize": 36},
            "model": {"name": "simple_net", "num_classes": 3, "mode": "bp", "options": {"width": 0.25}},
            "optim": {"lr": 0.05, "schedule": "cosine"},
            # 2 CPUs per single-worker trial on this 2-CPU machine: one trial at a time, in trial order
            "run": {"epochs": 3, "workers": 1, "cpus_per_worker": 2, "storage_path": str(tmp_path / "exp")}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "params": {"optim.lr": {"loguniform": [0.01, 0.1]},
                   "model.options.convs": {"choice": [[1, 1, 1], [1, 2, 2]]}},
        "depth": "model.options.convs", "warm_start": True}))
    search = [sys.executable, f"{ROOT}/tuning/search.py", "--scheduler", "fifo", "--name", "exp1"]
    log = open(tmp_path / "first.log", "wb")
    first = [*search, "--config", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml"), "--trials", "3"]
    driver = subprocess.Popen(first, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its own process group: the driver and its Ray
    experiment = tmp_path / "exp" / "exp1"
    deadline = time.time() + 300
    while not mid_run(experiment):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no trial checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert len(list((experiment / "finished").glob("*.json"))) < 3  # killed mid-experiment

    resumed = subprocess.run([*search, "--resume", "--storage-path", str(tmp_path / "exp")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=900, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the console is ours: a line per trial epoch and per finished trial, no Tune tables or Train reports
    console = resumed.stdout + resumed.stderr
    assert re.search(r"^trial \w+ epoch 3/3: top-1 error [\d.]+%$", console, re.M), console[-3000:]
    assert re.search(r"^trial \w+ done after 3 epoch\(s\): best top-1 error [\d.]+%, model.options.convs=\[.*\], "
                     r"optim.lr=[\d.]+$", console, re.M), console[-3000:]
    assert not [noise for noise in ("Trial status", "Reporting training result", "TrainingReport(")
                if noise in console], console[-3000:]

    finished = {p.stem: json.loads(p.read_text()) for p in (experiment / "finished").glob("*.json")}
    assert len(finished) == 3  # every trial, once: the resume started no new ones
    histories = {}
    for trial_id in finished:
        rows = [json.loads(line) for p in experiment.glob(f"train_driver_{trial_id}_*/result.json")
                for line in p.read_text().splitlines()]
        histories[trial_id] = rows
        assert sorted({r["epoch"] for r in rows}) == [0, 1, 2]
    # the trial the kill interrupted went on from its checkpoint, not from scratch
    assert any(r["attempt_start_epoch"] > 0 for rows in histories.values() for r in rows)
    # a deeper trial started from a shallower finished one's checkpoint (VGG's trick)
    configs = {t: yaml.safe_load((experiment / "trial_configs" / f"{t}.yaml").read_text()) for t in finished}
    depth = {t: json.dumps(c["model"]["options"]["convs"]) for t, c in configs.items()}
    for t, c in configs.items():
        if c["model"]["init_from"]:
            source = next(s for s, m in finished.items() if m["checkpoint"] == c["model"]["init_from"])
            assert depth[source] == "[1, 1, 1]" and depth[t] == "[1, 2, 2]"

    from tuning import analyze

    out = tmp_path / "analysis"
    assert analyze.main([str(experiment), "--out", str(out)]) == 0
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"} and {r["epochs"] for r in rows} == {"3"}
    errors = [float(r["best_top1_error"]) for r in rows]
    assert errors == sorted(errors)
    for png in ("curves.png", "error_vs_lr.png", "error_vs_depth.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = yaml.safe_load((out / "best.yaml").read_text())
    best_id = rows[0]["trial_id"]
    assert best["optim"]["lr"] == configs[best_id]["optim"]["lr"] and best["run"]["name"] is None
    repro = subprocess.run([sys.executable, f"{ROOT}/training/run.py", "--config", str(out / "best.yaml"),
                            "--set", "run.epochs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           start_new_session=True)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert "top-1 error" in repro.stdout
