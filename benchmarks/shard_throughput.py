"""Sharding throughput: this pipeline vs a naive single-process loop, on the same generated images.

    python benchmarks/shard_throughput.py [--images 2000] [--cpus 2] [--cpus 1 4 16]

Prints JSON.  For each input kind ("passthrough": 256x256 baseline JPEGs already at the target
geometry; "resize": 683x512 JPEGs, the geometry of Places365 data_large (shorter side 512), that must be
decoded, resized to 256x256 and re-encoded), per CPU count:
- ours_end_to_end_img_s: images / wall time of a whole `shard.run` (pre-flight, shuffles, writes,
  index files), on a fresh local Ray cluster of that many CPUs (cluster start-up excluded);
- ours_img_s_per_core: images / summed worker seconds of the write stage (what each added core buys
  once the fixed pipeline overhead is amortised, as it is at 8M images);
- naive_img_s_per_core: one process, Pillow open -> RGB -> resize -> JPEG encode -> webdataset TarWriter.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import webdataset as wds
from PIL import Image

from pipelines.offline.sharding import ShardConfig, run

KINDS = {"passthrough": (256, 256), "resize": (683, 512)}  # resize: Places365 data_large geometry


def make_images(root: str, kind: str, n: int) -> tuple[str, str]:
    w, h = KINDS[kind]
    rng = np.random.default_rng(0)
    images = os.path.join(root, kind, "images")
    lines = []
    for i in range(n):
        cls = i % 10
        folder = os.path.join(images, f"class{cls}")
        os.makedirs(folder, exist_ok=True)
        base = rng.uniform(0, 255, (h // 16, w // 16, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
        img.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
        lines.append(f"/class{cls}/{i:06d}.jpg {cls}")
    listing = os.path.join(root, kind, "train.txt")
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, kind, "categories.txt"), "w") as f:
        f.write("".join(f"/c/class{c} {c}\n" for c in range(10)))
    return listing, images


def naive(listing: str, images: str, out: str) -> float:
    """The loop most people write first: no passthrough, no parallelism."""
    started = time.perf_counter()
    with open(listing) as f, wds.TarWriter(out) as sink:
        for n, line in enumerate(f):
            path, label = line.rsplit(None, 1)
            img = Image.open(os.path.join(images, path.lstrip("/"))).convert("RGB").resize((256, 256))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            sink.write({"__key__": f"{n:08d}", "jpg": buf.getvalue(), "cls": label.encode()})
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--cpus", type=int, nargs="+", default=[os.cpu_count() or 1])
    a = p.parse_args()
    import ray

    results = {"images_per_kind": a.images, "machine_cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {kind: make_images(tmp, kind, a.images) for kind in KINDS}
        naive_rate = {kind: a.images / naive(*inputs[kind], os.path.join(tmp, f"naive-{kind}.tar"))
                      for kind in KINDS}
        for cpus in a.cpus:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            for kind, (listing, images) in inputs.items():
                out = os.path.join(tmp, f"out-{kind}-{cpus}")
                m = run(ShardConfig(out=out, list=listing, images_root=images,
                                    categories=os.path.join(tmp, kind, "categories.txt")))
                per_core = m["written"] / m["worker_seconds"]
                results["runs"].append({
                    "kind": kind, "cpus": cpus, "passthrough_samples": m["passthrough"],
                    "ours_end_to_end_img_s": round(m["written"] / m["elapsed_s"], 1),
                    "ours_img_s_per_core": round(per_core, 1),
                    "naive_img_s_per_core": round(naive_rate[kind], 1),
                    "per_core_speedup_vs_naive": round(per_core / naive_rate[kind], 2),
                    "end_to_end_speedup_vs_naive": round(m["written"] / m["elapsed_s"] / naive_rate[kind], 2),
                })
                print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)  # progress
            ray.shutdown()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
