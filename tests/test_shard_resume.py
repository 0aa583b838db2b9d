"""Kill the sharding driver mid-run, rerun with the same arguments: finished shards are kept."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from PIL import Image

from conftest import ROOT, encode, scene
from pipelines import shard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    lines = []
    for cid in range(4):
        folder = root / "images" / f"class{cid}"
        folder.mkdir(parents=True)
        for i in range(60):
            # Large enough that resizing takes real time, so the kill lands mid-run.
            (folder / f"{i:04d}.jpg").write_bytes(encode(scene(cid * 1000 + i, 960, 720)))
            lines.append(f"/class{cid}/{i:04d}.jpg {cid}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("".join(f"class{c} {c}\n" for c in range(4)))
    return root


def argv(corpus, out):
    return ["--list", str(corpus / "train.txt"), "--images-root", str(corpus / "images"),
            "--categories", str(corpus / "categories.txt"), "--out", str(out),
            "--image-size", "96", "--shard-samples", "4"]


def complete_tars(out):
    """Every .tar under a final name must be whole: all members present and every JPEG decodable."""
    for path in out.glob("*.tar"):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert len(members) % 3 == 0 and members
            for m in members:
                if m.name.endswith(".jpg"):
                    Image.open(io.BytesIO(tar.extractfile(m).read())).load()


def test_killed_driver_resumes_and_matches_an_uninterrupted_run(ray_cluster, big_corpus, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pipelines", "shard.py"), *argv(big_corpus, out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list((out / ".state").glob("c*.json"))) < 3:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((out / ".state").glob("c*.json")))
    total_shards = 4 * 15
    assert done_at_kill < total_shards
    assert not (out / "manifest.json").exists() and not (out / "index.json").exists()
    assert len(list((out / ".state" / "members").glob("c*.json"))) == total_shards  # lists of the shards to write
    complete_tars(out)

    time.sleep(2)  # let Ray reap the dead driver's tasks
    assert shard.main(argv(big_corpus, out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == 240 and manifest["shards"] == total_shards
    assert manifest["shards_reused"] >= done_at_kill
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / ".state" / "members").exists()

    fresh = tmp_path / "fresh"
    assert shard.main(argv(big_corpus, fresh)) == 0
    for name in sorted(p.name for p in fresh.iterdir() if p.is_file() and p.name != "manifest.json"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
