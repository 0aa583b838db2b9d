"""Training-input throughput: our uniform and class-aware streams vs torchvision ImageFolder + DataLoader.

    python benchmarks/loader_throughput.py [--images 3000] [--loader-workers 2] [--batch-size 64] [--crop rrc]

Prints JSON.  The same 256x256 JPEGs are written once as an ImageFolder tree and sharded from it by
pipelines/shard.py (which passes them through byte for byte).  Every contender does decode + the
same train transform (random-resized crop to 224, flip, normalise) + collate, with the same number
of DataLoader workers and batch size, for one pass over the images after a warm-up (one batch per
worker), delivered as normalised float batches on the training device (the GPU when there is one:
ours ship uint8 and normalise there, ImageFolder pins its float batches and copies them); "per core"
= images/s / workers.  On a GPU machine, also the batched nvJPEG decode path (`device_decode`: decode,
the planned random-resized crop, resize, flip, normalise, on the GPU).  Then the per-image cost, on
one core, of what each data worker does (`worker_us_per_image_*`).  Finally, the bounds of a
class-aware stream over 365 classes: peak extra open files, the offsets file's bytes per sample, and
how much the process's resident memory grew while streaming.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from common.tool_settings import add_old_spelling
from pipelines.online.catalog import Catalog
from pipelines.online.device_decode import decode_planned
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.streams import ClassAwareStream, UniformStream
from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform


def make_tree(root: str, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        base = rng.uniform(0, 255, (16, 16, 3)).astype(np.uint8)
        Image.fromarray(base).resize((256, 256), Image.Resampling.BILINEAR).save(
            os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def bounded_at_365_classes(tmp: str, draws: int = 20000) -> dict:
    """Open files and memory of one class-aware stream over 365 classes (3 shards each): every draw is
    one range read, so nothing stays open or buffered; the node-local offsets file is 16 bytes/sample."""
    from common.storage import Location
    from pipelines.offline import shard_index
    from pipelines.offline.tar_shard import build_shard

    loc = Location.parse(os.path.join(tmp, "places365_like"))
    loc.make_dirs()
    rng = np.random.default_rng(1)
    summaries = []
    for cls in range(365):
        for s in range(3):
            samples = []
            for i in range(8):
                buf = io.BytesIO()
                Image.fromarray(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)).resize((96, 96)).save(
                    buf, format="JPEG", quality=90)
                samples.append({"__key__": f"c{cls}_{s}_{i}", "cls": str(cls).encode(), "jpg": buf.getvalue(),
                                "json": b"{}"})
            built = build_shard(samples)
            url = f"c{cls:04d}-{s:05d}.tar"
            loc.write_atomic(url, built.data)
            summaries.append({"url": url, "nsamples": 8, "filesize": len(built.data), "md5sum": built.md5,
                              "label": cls, "group": url})
    shard_index.write_index(loc, summaries, "places365-like", tuple(f"class{c}" for c in range(365)))
    stream = ClassAwareStream(Catalog.load(loc.root))
    fds_before, rss_before = len(os.listdir("/proc/self/fd")), rss_mb()
    peak_fds = peak_rss = 0
    for n, _ in enumerate(itertools.islice(stream, draws)):
        if n % 50 == 0:
            peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")) - fds_before)
            peak_rss = max(peak_rss, rss_mb())
    return {"classes": 365, "shards": 365 * 3, "draws": draws, "peak_extra_fds": peak_fds,
            "offsets_bytes_per_sample": int(stream.offsets.table.nbytes // stream.offsets.rows),
            "rss_growth_mb": round(peak_rss - rss_before, 1)}


def worker_cost_per_image(tree: str, tv, ours: TrainTransform, n: int = 500) -> dict:
    """Microseconds per image, one core, of what each data worker does per sample: torchvision's
    Pillow open + transforms (to a normalised float tensor) vs ours (bytes -> uint8 crop); best of 3."""
    import random

    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(tree) for f in files)[:n]
    jpegs = [open(p, "rb").read() for p in paths]
    rng = random.Random(0)
    contenders = {"torchvision": lambda i: tv(Image.open(io.BytesIO(jpegs[i])).convert("RGB")),
                  "ours": lambda i: ours(jpegs[i], rng)}
    best = {}
    for _ in range(3):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for i in range(len(jpegs)):
                fn(i)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / len(jpegs) * 1e6)
    return {"worker_us_per_image_torchvision": round(best["torchvision"], 1),
            "worker_us_per_image_ours": round(best["ours"], 1),
            "worker_cost_ours_over_torchvision": round(best["ours"] / best["torchvision"], 3)}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rate(batches, warmup: int, device: torch.device) -> float:
    """Images/s of normalised float batches delivered on `device` (where training would use them)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    count, start = 0, time.perf_counter()
    for images, _ in it:
        images = images.to(device, non_blocking=True)
        count += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def gpu_decode_rate(shards: str, ours: TrainTransform, batch: int) -> dict:
    """Images/s of the GPU's decoder on planned crops of the shards' first JPEGs (a CUDA device only)."""
    catalog = Catalog.load(shards)
    jpegs = [d.members["jpg"] for d in UniformStream(catalog)][: batch * 20]
    plans = torch.tensor([ours.plan(j, random.Random(i)) for i, j in enumerate(jpegs)])
    normalize = ours.batch_normalizer()
    out = torch.empty(batch, 3, 224, 224, device="cuda")

    def decode_batch(i: int) -> None:
        chunk = jpegs[i:i + batch]
        decode_planned(chunk, plans[i:i + batch], out[:len(chunk)])
        normalize(out[:len(chunk)])

    decode_batch(0)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(jpegs), batch):
        decode_batch(i)
    torch.cuda.synchronize()
    return {"gpu_decode_img_s": round(len(jpegs) / (time.perf_counter() - start), 1),
            "gpu": torch.cuda.get_device_name()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    add_old_spelling(p, "--batch", "--batch-size")
    add_old_spelling(p, "--workers", "--loader-workers")
    a = p.parse_args()
    import ray

    from pipelines.offline.sharding import ShardConfig, run

    result = {"images": a.images, "workers": a.loader_workers, "batch": a.batch_size,
              "transform": "rrc224+flip+normalize",
              "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tree, shards = os.path.join(tmp, "tree"), os.path.join(tmp, "shards")
        make_tree(tree, a.images)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        run(ShardConfig(out=shards, image_folder=tree, shard_samples=500))
        ray.shutdown()
        torch.set_num_threads(1)
        warmup = max(2, a.loader_workers)  # every worker has delivered its first batch: steady state

        tv = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        result["delivered_to"] = device.type
        folder = DataLoader(ImageFolder(tree, transform=tv), batch_size=a.batch_size, shuffle=True,
                            num_workers=a.loader_workers, persistent_workers=False, pin_memory=device.type == "cuda")
        ours = TrainTransform(crop="rrc", size=224)
        figures = {}
        for _ in range(2):  # alternate, keep each one's best
            figures["imagefolder"] = max(figures.get("imagefolder", 0), rate(folder, warmup, device))
            for mode in ("uniform", "class-aware"):
                loader = ShardLoader(LoaderConfig(shards=shards, mode=mode, batch_size=a.batch_size,
                                                  num_workers=a.loader_workers), ours, device=device)
                figures[mode] = max(figures.get(mode, 0), rate(loader.epoch(0), warmup, device))
        for name, value in figures.items():
            result[f"{name}_img_s"] = round(value, 1)
            result[f"{name}_img_s_per_core"] = round(value / a.loader_workers, 1)
        result["uniform_over_imagefolder"] = round(figures["uniform"] / figures["imagefolder"], 3)
        result["class_aware_over_imagefolder"] = round(figures["class-aware"] / figures["imagefolder"], 3)
        result["class_aware_over_uniform"] = round(figures["class-aware"] / figures["uniform"], 3)

        result.update(worker_cost_per_image(tree, tv, ours))
        result["class_aware_365_classes"] = bounded_at_365_classes(tmp)

        if torch.cuda.is_available():
            result.update(gpu_decode_rate(shards, ours, a.batch_size))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
