"""What a newcomer sees: README command (1)'s demo from nothing, then evaluate.py on what it trained."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, free_port, start_head, stop_head

pytestmark = pytest.mark.slow
EPOCHS = 8  # configs/train/demo.yaml
RAY_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
RAY_NOISE = ("TrainingReport(", "Reporting training result", "logging_progress", "Running Dataset",
             "Checkpoint successfully created", "Started a local Ray instance")


def ray_info_lines(lines: list[str]) -> list[str]:
    """Lines from Ray itself that are neither warnings nor errors (which do belong on the console)."""
    return [line for line in lines if any(noise in line for noise in RAY_NOISE)
            or ("pid=" in line and not any(level in line for level in (" E ", "WARNING", "ERROR")))]


def ray_lines(lines: list[str]) -> list[str]:
    """Lines printed by Ray: its loggers' (a date, a tab, the level) or a forwarded worker's (pid=)."""
    return [line for line in lines if "pid=" in line or RAY_LOG_LINE.match(line)]


def run_tool(cwd: Path, *argv: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a newcomer's
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo, with another Ray cluster running on this machine (a `ray start` of someone else's): what
    Ray's own actors find when they look for "the" cluster among the machine's processes."""
    cwd = tmp_path_factory.mktemp("newcomer")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    other = start_head(tempfile.mkdtemp(prefix="ro", dir="/tmp"), env, f"--port={free_port()}", "--num-cpus=1",
                       dashboard=free_port())
    try:
        code, lines = run_tool(cwd, os.path.join(ROOT, "training", "run.py"))
    finally:
        stop_head(other)
    assert code == 0, "\n".join(lines[-60:])
    return cwd, lines


def logged_anywhere(folder: Path, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix
               in (".log", ".out", ".err"))


def test_the_demo_console_is_ours_and_fits_on_a_screen(demo):
    cwd, lines = demo
    text = "\n".join(lines)
    assert len(lines) <= 40, text
    for epoch in range(1, EPOCHS + 1):
        assert sum(line.startswith(f"epoch {epoch}/{EPOCHS} done: top-1 error ") for line in lines) == 1, text
    assert not ray_info_lines(lines), text
    assert not ray_lines(lines), text  # not even Ray's warnings: none of them is about the demo's run
    assert "Traceback" not in text and "Found multiple active Ray instances" not in text  # the other cluster's
    assert "entries read 1646 = written 1641 + quarantined 5" in text  # the demo's bad train entries
    [run] = list((cwd / "runs").iterdir())
    for shown in (f"report: {run}/report.json", f"best checkpoint: {run}/checkpoint_",
                  f"TensorBoard: tensorboard --logdir {run}/tensorboard", "Ray dashboard: http://"):
        assert sum(shown in line for line in lines) == 1, (shown, text)
    # Ray's INFO output is not lost: it is in the session logs whose path the console gave, once
    [where] = [line.split("Ray's own logs: ")[1] for line in lines if "Ray's own logs: " in line]
    assert logged_anywhere(Path(where), "Reporting training result")
    assert logged_anywhere(Path(where), "Running Dataset")
    assert logged_anywhere(Path(where), "has constructor arguments in the object store")  # dropped from the console


def test_evaluate_reproduces_the_runs_validation_with_no_extra_flags(demo):
    cwd, _ = demo
    [run] = list((cwd / "runs").iterdir())
    code, lines = run_tool(cwd, os.path.join(ROOT, "training", "evaluate.py"), "--checkpoint", str(run),
                           "--shards", "data/demo/shards/val", "--out", "eval")
    text = "\n".join(lines)
    assert code == 0 and len(lines) <= 10 and not ray_info_lines(lines), text
    metrics = json.loads((cwd / "eval" / "metrics.json").read_text())
    [checkpoint] = metrics["checkpoints"]
    report = json.loads((run / "report.json").read_text())
    assert checkpoint == f"{report['best_checkpoint']}/state.pt"
    assert f"best checkpoint of the run by top-1 error: {Path(checkpoint).parent.name}" in text
    validated = torch.load(checkpoint, weights_only=True)["history"][-1]  # the trainer's own validation
    assert (metrics["size"], metrics["scales"]) == (64, [73])  # data.size, data.eval_resize of the demo
    assert metrics["fused"]["images"] == validated["val_images"] == 400
    assert metrics["fused"]["top1_error"] == pytest.approx(validated["top1_error"], abs=1e-9)
    assert metrics["fused"]["top5_error"] == pytest.approx(validated["top5_error"], abs=1e-9)


def test_a_failure_during_training_ends_with_one_line_naming_it_and_its_traceback(tmp_path):
    """A training shard damaged in place (its size unchanged, so the pre-flight passes) and no room for
    skipped samples: the run fails in epoch 1.  The console ends with one line saying what failed and
    where the traceback is; Ray's per-worker copies of the traceback stay in its logs."""
    from conftest import write_shards

    write_shards(tmp_path / "train", [8, 8, 8], shard_samples=4)
    write_shards(tmp_path / "val", [2, 2, 2], shard_samples=2)
    victim = tmp_path / "train" / "c0000-00000.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[:1500] + b"\xff" * 600 + data[2100:])
    code, lines = run_tool(tmp_path, os.path.join(ROOT, "training", "run.py"), "--set", "model.num_classes=3",
                           "--set", f"data.train_shards={tmp_path / 'train'}", "--set",
                           f"data.val_shards={tmp_path / 'val'}", "--set", "run.epochs=1", "--set",
                           "run.max_failures=0", "--set", "data.max_skipped_fraction=0", "--set", "data.size=32",
                           "--set", "data.eval_resize=36", "--set", "model.num_attributes=0")
    text = "\n".join(lines)
    assert code == 1, text
    last = lines[-1]
    assert last.startswith("run.py: failed: RuntimeError: epoch 1 skipped ") and \
        "above data.max_skipped_fraction = 0 (traceback: " in last, text
    log = Path(last.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "check_epoch_input" in log.read_text()
    assert not any("Error in training function" in line for line in lines), text
