"""SIGKILL a Ray Train worker mid-epoch: the run recovers through FailureConfig from its last checkpoint,
and every epoch's input stream is the one an uninterrupted run sees."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import write_shards
from training import run
from training.checkpoint.reporting import FOLDER_PREFIX, remove_orphaned_folders
from training.worker_failures import RestartLines, WorkerFailure

pytestmark = pytest.mark.slow


def train_worker_pids() -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return sorted(pids)


def kill_one_worker_after_first_checkpoint(run_dir, killed: list, settle_s: float) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        if list(run_dir.glob("checkpoint_*/state.pt")):
            time.sleep(settle_s)
            pids = train_worker_pids()
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
                return
        time.sleep(0.05)


def clean_and_killed_runs(tmp_path, settings: list[str], settle_s: float) -> tuple[list[dict], list[dict]]:
    """The epoch histories of an uninterrupted run and of the same run with one Train worker SIGKILLed
    `settle_s` after its first checkpoint appears."""
    write_shards(tmp_path / "train", [60, 40, 25, 12], shard_samples=10, size=40)
    write_shards(tmp_path / "val", [8, 8, 8, 8], shard_samples=8, size=40)
    common = ["--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
              "--set", f"run.storage_path={tmp_path}/runs", "--set", "model.num_classes=4",
              "--set", "data.size=32", "--set", "data.eval_resize=36", "--set", "model.num_attributes=0", *settings]
    assert run.main([*common, "--set", "run.name=clean"]) == 0
    killed: list[int] = []
    watcher = threading.Thread(target=kill_one_worker_after_first_checkpoint,
                               args=(tmp_path / "runs" / "killed", killed, settle_s), daemon=True)
    watcher.start()
    assert run.main([*common, "--set", "run.name=killed", "--set", "run.max_failures=2"]) == 0
    watcher.join(timeout=5)
    assert killed, "no worker was killed"
    return tuple(json.loads((tmp_path / "runs" / name / "report.json").read_text())["history"]
                 for name in ("clean", "killed"))


def test_killed_worker_recovers_and_the_stream_matches(ray_cluster, tmp_path, capsys):
    # killed a second into the epoch after the first checkpoint
    clean, recovered = clean_and_killed_runs(tmp_path, ["--set", "run.epochs=4", "--set", "data.batch_size=8"], 1.0)
    # the killed run's console says it once, in our words, between its epoch lines
    killed_console = capsys.readouterr().out.split("as run killed", 1)[1].splitlines()
    failed = [line for line in killed_console if "failed" in line]
    assert len(failed) == 1, killed_console
    [line] = failed
    assert re.fullmatch(r"Train worker ranks? [01](, 1)? failed \(Ray's logs say why\); the worker group restarted "
                        r"from checkpoint checkpoint_\S+ \(epoch \d, its end\), with the same input stream", line), line
    assert not any(line.startswith("continuing from") for line in killed_console)
    assert [h["epoch"] for h in recovered] == [0, 1, 2, 3]
    assert all(h["attempt_start_epoch"] == 0 for h in clean)
    assert any(h["attempt_start_epoch"] > 0 for h in recovered)  # a new worker group restored a checkpoint
    assert [h["input_checksum"] for h in recovered] == [h["input_checksum"] for h in clean]
    assert [h["step"] for h in recovered] == [h["step"] for h in clean]
    # model, optimiser, stream and dropout draws all restored: the same losses
    assert [h["loss"] for h in recovered] == pytest.approx([h["loss"] for h in clean], rel=1e-4)


@pytest.mark.parametrize("decode", ["workers", "device"])  # device: the loader decodes a batch ahead
def test_a_failure_inside_an_epoch_resumes_from_the_mid_epoch_checkpoint(ray_cluster, tmp_path, decode):
    """Checkpoints every 3 steps inside a 17-step epoch; a worker killed right after the first one: the run
    continues that epoch from its checkpoint, with the batches and metrics of an uninterrupted run."""
    clean, recovered = clean_and_killed_runs(tmp_path, ["--set", "run.epochs=1", "--set", "data.batch_size=4",
                                                        "--set", "run.checkpoint_every_steps=3",
                                                        "--set", "run.num_to_keep=1", "--set", f"data.decode={decode}"],
                                             0.0)
    assert [h["epoch"] for h in recovered] == [0] and all(h["resumed_from_step"] == 0 for h in clean)
    assert recovered[0]["resumed_from_step"] in (3, 6, 9, 12, 15)  # epoch 0 went on from its checkpoint
    for key in ("input_checksum", "step", "val_images"):
        assert [h[key] for h in recovered] == [h[key] for h in clean], key
    for a, b in zip(recovered, clean):  # the same model state and batches: the same losses
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["top1_error"] == pytest.approx(b["top1_error"])
    # kept: the best epoch-end checkpoint, and the latest (which Ray Train always keeps)
    kept = sorted((tmp_path / "runs" / "killed").glob("checkpoint_*/state.pt"))
    assert 1 <= len(kept) <= 2


def test_the_local_folder_a_killed_worker_left_mid_upload_is_removed(tmp_path):
    """Checkpoint folders are named after their writing process; the next checkpoint on the node removes
    those of processes that are gone, and leaves a running process's and anything not named that way."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for name in (f"{FOLDER_PREFIX}{gone.pid}-k2x9", f"{FOLDER_PREFIX}{os.getpid()}-a7q1", f"{FOLDER_PREFIX}q8w3",
                 "other-123-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes(b"1")
    assert remove_orphaned_folders(str(tmp_path)) == [str(tmp_path / f"{FOLDER_PREFIX}{gone.pid}-k2x9")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{FOLDER_PREFIX}{os.getpid()}-a7q1", f"{FOLDER_PREFIX}q8w3", "other-123-x"])


def test_the_failed_ranks_and_the_restore_make_one_line_whatever_follows():
    restore = "the worker group restarted from checkpoint checkpoint_x (epoch 2, its end), with the same input stream"
    lines = RestartLines()
    assert lines.feed("epoch 1/4 done: ...") == ["epoch 1/4 done: ..."]
    assert lines.feed(WorkerFailure((1,))) == []  # held until the new group's rank 0 says where it continues
    assert lines.feed(restore) == [f"Train worker rank 1 failed (Ray's logs say why); {restore}"]
    assert lines.feed("epoch 2/4 done: ...") == ["epoch 2/4 done: ..."] and lines.end() == []
    # a group restarted before the first checkpoint: no restore line comes, the next line follows its own
    lines.feed(WorkerFailure((0, 1)))
    assert lines.feed("epoch 1/4 step 3/9: ...") == [
        "Train worker ranks 0, 1 failed (Ray's logs say why); the worker group restarted from the start (no "
        "checkpoint yet), with the same input stream", "epoch 1/4 step 3/9: ..."]
    # retries spent: the failure alone, at the end (the driver's failure line follows it)
    lines.feed(WorkerFailure((1,)))
    assert lines.end() == ["Train worker rank 1 failed (Ray's logs say why)"]
