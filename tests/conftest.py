"""Shared fixtures: a real local Ray cluster per module, and generated corpora with every odd kind."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Every command-line tool: its script, and the module that holds its build_parser and main.
TOOLS = {"pipelines/shard.py": "pipelines.shard", "pipelines/sample.py": "pipelines.sample",
         "pipelines/color_pca.py": "pipelines.color_pca", "pipelines/demo_shards.py": "pipelines.demo_shards",
         "pipelines/demo_corpus.py": "pipelines.demo_corpus", "pipelines/demo_video.py": "pipelines.demo_video",
         "training/run.py": "training.run", "training/evaluate.py": "training.evaluate",
         "training/predict.py": "training.predict", "tuning/search.py": "tuning.search",
         "tuning/analyze.py": "tuning.analyze"}


def installed() -> dict[str, str]:
    """places-* name -> the script it runs, from pyproject.toml's [project.scripts]."""
    text = open(os.path.join(ROOT, "pyproject.toml")).read().split("[project.scripts]")[1].split("\n[")[0]
    scripts = {module: path for path, module in TOOLS.items()}
    return {name: scripts[target.split(":")[0]]
            for name, target in re.findall(r'^(places-[\w-]+) = "([^"]+)"', text, re.M)}


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config):
    """End the test process with the session's own status, once pytest has reported everything.  Ray's
    C++ core worker can crash while the interpreter tears down after many clusters were started and shut
    down in one process (a CI run ended "536 passed", then "pure virtual method called" and a
    segmentation fault, exit 139): that says nothing about the tests, and must not turn a run red or
    green.  The tools' own exits are tested where users meet them: their CLIs, in subprocesses."""
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])


@pytest.fixture(scope="session", autouse=True)
def offsets_cache(tmp_path_factory):
    """The sampler's node-local offsets files in this session's own folder (set before any Ray worker
    starts, so they inherit it): a cache left in the system temp folder by an earlier run under the same
    paths would otherwise be found instead of built."""
    from pipelines.online.class_offsets import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("places-ray-cache"))
    yield os.environ[CACHE_ENV]


@pytest.fixture(scope="session", autouse=True)
def ray_temp_root():
    """The suite's own Ray temp root (RAY_TMPDIR, inherited by every tool the tests start): a `ray start`
    that died on this machine without `ray stop` leaves its address in /tmp/ray/ray_current_cluster, and
    every ray.init() would join it (the tools refuse it: test_cluster_shape).  Kept short: Ray's socket
    paths under it must fit in 107 bytes."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(temp: str, env: dict, *args: str, dashboard: int | None = None) -> subprocess.Popen:
    """`ray start --head --block` in a process group of its own (its GCS, raylet, dashboard and, with
    --autoscaling-config, its monitor), with its own temp dir; with `dashboard`, waits until a job can be
    submitted there (the job API answers before the head's agent has registered)."""
    # its own agent port too: two heads on one machine would both take 52365, and the second has no job agent
    argv = ["ray", "start", "--head", "--block", f"--temp-dir={temp}", f"--dashboard-agent-listen-port={free_port()}",
            *args]
    if dashboard:
        argv += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    probe = ["ray", "job", "submit", "--no-wait", "--address", f"http://127.0.0.1:{dashboard}", "--",
             sys.executable, "-c", "pass"]
    while dashboard and subprocess.run(probe, env=env, capture_output=True).returncode:
        if proc.poll() is not None or time.time() > deadline:
            stop_head(proc)
            raise AssertionError(f"the head node in {temp} did not come up")
        time.sleep(2)
    return proc


def stop_head(proc: subprocess.Popen) -> None:
    """Every process of that cluster, by its process group: never `ray stop`, which kills every Ray here."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)  # a graceful stop of every process takes half a minute; its own temp dir goes anyway
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# -- image helpers -----------------------------------------------------------------------------
def scene(seed: int, w: int = 64, h: int = 64) -> np.ndarray:
    """A small picture with structure (so resize and JPEG have something to work on)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    img = base + 40 * np.sin(x[..., None] / rng.uniform(3, 9) + np.arange(3)) + 30 * (y[..., None] / h)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    if fmt == "JPEG":
        kw.setdefault("quality", 90)
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def odd_files(size: int = 64) -> dict[str, bytes]:
    """Every broken and odd kind REFERENCE.md names, keyed by a descriptive file name."""
    good = scene(1, size, size)
    rotated = Image.fromarray(scene(2, size, size // 2)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    gif_frames = [Image.fromarray(scene(10 + i, size, size)).quantize(32) for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=50, loop=0)
    tiff = io.BytesIO()
    pages = [Image.fromarray(scene(20 + i, size, size)) for i in range(2)]
    pages[0].save(tiff, format="TIFF", save_all=True, append_images=pages[1:])
    sixteen = Image.fromarray((np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16))
    rgba = np.dstack([good, np.full((size, size), 128, np.uint8)])
    full = encode(good)
    claims_9000 = bytearray(encode(scene(4, 16, 16)))  # a 16x16 file whose frame header says 9000x9000
    sof = claims_9000.index(b"\xff\xc0")
    claims_9000[sof + 5:sof + 9] = (9000).to_bytes(2, "big") * 2
    return {
        "ok_baseline.jpg": full,
        "ok_progressive.jpg": encode(good, progressive=True),
        "ok_cmyk.jpg": encode(Image.fromarray(good).convert("CMYK")),
        "ok_gray.jpg": encode(Image.fromarray(good).convert("L")),
        "ok_16bit.png": encode(sixteen, "PNG"),
        "ok_palette.png": encode(Image.fromarray(good).quantize(16), "PNG"),
        "ok_alpha.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "ok_animated.gif": gif.getvalue(),
        "ok_exif_rotated.jpg": encode(rotated, exif=exif.tobytes()),
        "ok_multipage.tif": tiff.getvalue(),
        "ok_wide.jpg": encode(scene(3, size * 2, size)),
        "bad_empty.jpg": b"",
        "bad_truncated.jpg": full[: len(full) // 2],
        "bad_cut_closed.jpg": full[: len(full) // 2] + b"\xff\xd9",  # cut, then an EOI marker: looks whole
        "bad_claims_9000.jpg": bytes(claims_9000),
        "bad_html.jpg": b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>gone</body></html>",
        "bad_huge.png": encode(np.zeros((300, 400), np.uint8), "PNG"),  # over the test's --max-pixels
    }


# -- S3-compatible server on loopback --------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server():
    """A real moto S3 server on 127.0.0.1, with the AWS variables pointing at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- synthetic shards in shard.py's format, without running Ray ----------------------------------
def write_shards(out, counts: list[int], shard_samples: int, size: int = 16,
                 attributes: int = 0) -> dict[int, list[str]]:
    """Per-class shards + index.json as pipelines/shard.py lays them out; returns keys per class.  With
    `attributes`, each sample's `attr` member: attribute a is set when (class + a) is even, flipped for
    every (a + 3)-th sample (mostly what the class says, not only)."""
    from common.storage import Location
    from pipelines.offline import shard_index
    from pipelines.offline.tar_shard import build_shard

    loc = Location.parse(str(out))
    loc.make_dirs()
    summaries, keys = [], {}
    for cls, n in enumerate(counts):
        keys[cls] = [f"c{cls}_{i:05d}" for i in range(n)]
        for s, start in enumerate(range(0, n, shard_samples)):
            samples = [{"__key__": k, "cls": str(cls).encode(), "jpg": encode(scene(cls * 1000 + i, size, size)),
                        "json": b"{}"} for i, k in enumerate(keys[cls][start:start + shard_samples], start)]
            for i, sample in enumerate(samples, start):
                if attributes:
                    sample["attr"] = "".join("1" if ((cls + a) % 2 == 0) != (i % (a + 3) == 0) else "0"
                                             for a in range(attributes)).encode()
            built = build_shard(samples)
            url = f"c{cls:04d}-{s:05d}.tar"
            loc.write_atomic(url, built.data)
            summaries.append({"url": url, "nsamples": len(samples), "filesize": len(built.data),
                              "md5sum": built.md5, "label": cls, "group": url[:-4]})
    shard_index.write_index(loc, summaries, "synthetic", tuple(f"class{c}" for c in range(len(counts))),
                            tuple(f"attr{a}" for a in range(attributes)) if attributes else None)
    return keys


def csail_file(tmp_path, arch: str, classes: int = 365, seed: int = 0, old_names: bool = False):
    """A torchvision `arch` with random weights and statistics, saved as the CSAILVision release saved
    theirs: `torch.save({'epoch', 'arch', 'state_dict', 'best_prec1'})` of an `nn.DataParallel`, from a
    torch without BatchNorm's batch counter; densenet161's keys with torchvision < 0.3's names."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(num_classes=classes).eval()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.1 + (0.9 if name.endswith("running_var") else 0.0))
    state = {}
    for key, t in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if old_names:  # features.denseblock1.denselayer1.norm1.weight -> ...denselayer1.norm.1.weight
            for part in ("norm", "relu", "conv"):
                for n in "12":
                    key = key.replace(f".{part}{n}.", f".{part}.{n}.")
        state["module." + key] = t
    path = tmp_path / f"{arch}_places365.pth.tar"
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "best_prec1": 54.65}, path)
    return net, str(path)
