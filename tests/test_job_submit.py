"""The cluster path: `ray start --head` with token auth, then `ray job submit -- python training/run.py`."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head():
    """Our own head node, stopped by signalling its process group (never `ray stop`: that kills every Ray)."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    proc = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True).returncode:
        assert proc.poll() is None and time.time() < deadline, "the head node did not come up"
        time.sleep(2)
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)  # a graceful stop of every process takes half a minute; its own temp dir goes anyway
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
