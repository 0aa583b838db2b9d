"""Sharding at Places2 scale, measured: how the driver's memory, the workers' memory, every output file
and the wall time grow with the number of list entries, extrapolated to Places365-Challenge (8,026,628).

    python benchmarks/shard_scale.py --entries 100000 300000 1000000 [--classes 365] [--shard-samples 1000]

For each size, a Places-style list over 365 classes with Places' imbalance (class sizes spaced
geometrically from 1 to 10) is built cheaply: every entry is a distinct path, a hard link to one of 64
tiny 16x16 baseline JPEGs, which sharding passes through byte for byte (`--image-size 16`), so the
figures are sharding's own bookkeeping, not JPEG decoding.  Then `pipelines/shard.py` runs in a
subprocess (starting its own local Ray on every CPU), sampled every 0.2 s from /proc: peak RSS of the driver
(and of each of its parts: private, mapped files, Ray object store pages), and of the largest Ray worker
process.  Printed as JSON per size: wall time, those peaks, the size of every
output file type (total and largest file), then per metric the least-squares slope per entry and
the value it extrapolates to at 8,026,628 entries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACES_CHALLENGE = 8_026_628


def class_sizes(entries: int, classes: int) -> list[int]:
    weights = np.geomspace(1, 10, classes)
    sizes = np.floor(weights / weights.sum() * entries).astype(int)
    sizes[: entries - sizes.sum()] += 1
    return sizes.tolist()


def build_corpus(root: str, entries: int, classes: int) -> tuple[str, str, str]:
    """(list file, images root, categories file): `entries` distinct paths, hard links to 64 JPEGs."""
    images = os.path.join(root, "images")
    os.makedirs(os.path.join(root, "originals"))
    rng = np.random.default_rng(0)
    originals = []
    for i in range(64):
        path = os.path.join(root, "originals", f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path, quality=90)
        originals.append(path)
    list_path, categories = os.path.join(root, "train.txt"), os.path.join(root, "categories.txt")
    n = 0
    with open(list_path, "w") as listing, open(categories, "w") as cats:
        for k, size in enumerate(class_sizes(entries, classes)):
            name = f"c/class{k:03d}"
            cats.write(f"/{name} {k}\n")
            os.makedirs(os.path.join(images, name))
            for i in range(size):
                rel = f"{name}/{i:08d}.jpg"
                os.link(originals[n % 64], os.path.join(images, rel))
                listing.write(f"/{rel} {k}\n")
                n += 1
    return list_path, images, categories


def kind_of(rel: str) -> str:
    name = os.path.basename(rel)
    if name.endswith(".tar"):
        return "shard .tar"
    if rel.startswith(".state/rejects-"):
        return ".state/rejects-*.jsonl"
    if rel.startswith(".state/") and name.endswith(".json"):
        return ".state/<shard>.json (sidecars)"
    return name


def output_sizes(out: str) -> dict[str, dict]:
    sizes: dict[str, list[int]] = {}
    for folder, _, names in os.walk(out):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), out)
            sizes.setdefault(kind_of(rel), []).append(os.path.getsize(os.path.join(folder, name)))
    return {k: {"files": len(v), "total_bytes": sum(v), "largest_bytes": max(v)} for k, v in sorted(sizes.items())}


RSS_PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # total = private heap + mapped files + shared memory


def rss_parts(pid: int) -> dict[str, int]:
    """Resident bytes of a process (Linux /proc) and its three parts: RssShmem counts the pages of Ray's
    object store that the process has touched, which are the store's memory, not the process's.  {} once
    the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            parts = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f) if k in RSS_PARTS}
    except (OSError, ValueError):
        return {}
    return parts if len(parts) == len(RSS_PARTS) else {}


def rss(pid: int) -> int:
    return rss_parts(pid).get("VmRSS", 0)


def processes():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                yield int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue


def run_sharding(list_path: str, images: str, categories: str, out: str, shard_samples: int = 1000) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "pipelines", "shard.py"), "--list", list_path, "--images-root", images,
           "--categories", categories, "--out", out, "--image-size", "16", "--shard-samples", str(shard_samples)]
    started = time.perf_counter()
    log = tempfile.TemporaryFile()
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    driver_peak: dict[str, int] = dict.fromkeys(RSS_PARTS, 0)  # each part's own peak
    worker_peak = 0
    worker_title = ""  # what the largest worker was running when it peaked (Ray sets it as the process title)
    while driver.poll() is None:
        for part, size in rss_parts(driver.pid).items():
            driver_peak[part] = max(driver_peak[part], size)
        for pid, cmdline in processes():
            if "default_worker.py" in cmdline or cmdline.startswith("ray::"):
                size = rss(pid)
                if size > worker_peak:
                    worker_peak, worker_title = size, cmdline.strip()[:120]
        time.sleep(0.2)
    log.seek(0)
    output = log.read().decode(errors="replace")
    if driver.returncode != 0:
        raise RuntimeError(f"shard.py failed ({driver.returncode}):\n{output[-3000:]}")
    mb = {part: round(size / 2**20, 1) for part, size in driver_peak.items()}
    return {"wall_s": round(time.perf_counter() - started, 1), "driver_peak_rss_mb": mb["VmRSS"],
            "driver_peak_anon_mb": mb["RssAnon"], "driver_peak_file_mb": mb["RssFile"],
            "driver_peak_shmem_mb": mb["RssShmem"],
            "largest_worker_rss_mb": round(worker_peak / 2**20, 1), "largest_worker_running": worker_title,
            "last_line": output.strip().splitlines()[-1]}


def fit(xs: list[int], ys: list[float]) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1) if len(xs) > 1 else (ys[0] / xs[0], 0.0)
    return {"per_entry": float(f"{slope:.6g}"), "at_places365_challenge": round(float(intercept + slope * PLACES_CHALLENGE), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--classes", type=int, default=365)
    p.add_argument("--shard-samples", type=int, default=1000, help="shard.py's --shard-samples: fewer, more shards")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="shard-scale-")
    rows = []
    try:
        for n in sorted(a.entries):
            folder = os.path.join(work, str(n))
            t0 = time.perf_counter()
            list_path, images, categories = build_corpus(folder, n, a.classes)
            built = time.perf_counter() - t0
            out = os.path.join(folder, "out")
            row = {"entries": n, "corpus_build_s": round(built, 1),
                   **run_sharding(list_path, images, categories, out, a.shard_samples), "outputs": output_sizes(out)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress, while the next size runs
            shutil.rmtree(folder)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    xs = [r["entries"] for r in rows]
    trend = {m: fit(xs, [r[m] for r in rows]) for m in ("wall_s", "driver_peak_rss_mb", "driver_peak_anon_mb",
                                                       "driver_peak_shmem_mb", "largest_worker_rss_mb")}
    kinds = sorted({k for r in rows for k in r["outputs"]})
    files = {k: fit(xs, [r["outputs"].get(k, {}).get("largest_bytes", 0) / 2**20 for r in rows]) for k in kinds}
    print(json.dumps({"classes": a.classes, "shard_samples": a.shard_samples, "cpus": os.cpu_count(), "runs": rows,
                      "trend": trend,
                      "largest_file_mb_trend": files}, indent=1))


if __name__ == "__main__":
    main()
