"""The cluster path: `ray start --head` with token auth, then `ray job submit -- python training/run.py`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, free_port, start_head, stop_head

pytestmark = pytest.mark.slow


@pytest.fixture()
def head():
    """Our own head node, stopped by signalling its process group (never `ray stop`: that kills every Ray)."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    proc = start_head(temp, env, f"--port={free_port()}", "--num-cpus=2", dashboard=dashboard)
    yield f"http://127.0.0.1:{dashboard}", env
    stop_head(proc)


def test_job_submit_trains_and_checkpoints(head, tmp_path):
    address, env = head
    data, runs = tmp_path / "demo", tmp_path / "runs"
    entry = [sys.executable, "training/run.py", "--set", f"data.train_shards={data}/shards/train",
             "--set", f"data.val_shards={data}/shards/val", "--set", f"run.storage_path={runs}",
             "--set", "run.name=job-test", "--set", "run.epochs=1", "--set", "run.progress_every_s=0"]
    done = subprocess.run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--", *entry],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "top-1 error" in done.stdout and "succeeded" in done.stdout
    # rank 0's console lines, once each (a print() in a Train worker would show twice)
    steps = [line for line in done.stdout.splitlines() if "epoch 1/1 step " in line]
    assert len(steps) == 25 and steps[-1].split("epoch 1/1 step ")[1].startswith("25/25 (100%): ")
    assert sum("epoch 1/1 done: top-1 error " in line for line in done.stdout.splitlines()) == 1
    assert list((runs / "job-test").glob("checkpoint_*/state.pt"))
    assert (runs / "job-test" / "report.json").exists()
    # without the token the cluster refuses the same request
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    anonymous["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing-token")
    refused = subprocess.run(["ray", "job", "list", "--address", address], env=anonymous, capture_output=True)
    assert refused.returncode != 0
