"""Our input stream against the loaders people pick instead, side by side on the same JPEGs: MosaicML
Streaming, LitData, WebDataset and torchvision's ImageFolder.

    pip install -e ".[peers]"
    python benchmarks/peers.py [--images 3000] [--runs 3] [--loader-workers 1 2] [--batch-size 64]

Prints JSON.  The corpus: IMAGES JPEGs in 20 classes of imbalanced sizes (the largest 4 times the
smallest), at two geometries: 256x256 (pre-resized) and 683x512 (Places365's data_large), each written
once as an ImageFolder tree and converted by every contender's own tool.  Every contender decodes each
image, takes a random 224x224 crop and a flip, and delivers uint8 batches of BATCH that the main process
normalises alike (ImageNet mean/std, to float).  The peers decode with torchvision.io.decode_jpeg and crop
and flip with transforms.v2 (torchvision's fastest CPU path); ours with its own transform
(`TrainTransform(crop="random_crop")`) from shards that keep the JPEGs as they are.

Per contender, geometry and number of DataLoader workers, over one epoch with the page cache warm, the
median of RUNS passes: img/s, and CPU-ms per image: the whole machine's busy CPU time (/proc/stat: every
process and thread, the workers' and the peers' helper threads included) over the images delivered.
Conversion, ms per image: `pipelines/shard.py` (Ray Data on the running local cluster, decoding every
image to validate it) and `litdata.optimize` (every CPU, in a process of its own: it switches the
process to the "spawn" start method; it copies the bytes, validating nothing), each the marginal cost
past its fixed start-up (a 20-image conversion after a warm-up one), the start-ups and the whole runs
stated beside; Streaming's `MDSWriter` (one process copying the bytes), whole.  Batch class mix: the
rarest class's share of an epoch's samples over an even share (1.0: every class equally often, what
class-aware sampling is for).  Resume: a loader
restored from the state saved after 3 batches against an uninterrupted one, the next 2 batches: the
same samples (labels and keys), the same pixels.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

GEOMETRIES = {"256": (256, 256), "683": (683, 512)}
CLASSES = 20
CROP = 224
RESUME_AFTER, RESUME_CHECK = 3, 2
STARTUP_IMAGES = 20  # a conversion's fixed start-up: a run this small (shard.py's after a warm-up run)


def class_sizes(images: int) -> list[int]:
    """CLASSES sizes summing to `images`, from 4 units down to 1 (geometric), the largest first."""
    weights = np.geomspace(4, 1, CLASSES)
    sizes = np.floor(weights / weights.sum() * images).astype(int)
    sizes[: images - sizes.sum()] += 1
    return sizes.tolist()


def make_tree(root: str, geometry: str, images: int) -> list[tuple[str, int, str]]:
    """class{c}/{i}.jpg files; returns (path, label, key) per image."""
    w, h = GEOMETRIES[geometry]
    rng = np.random.default_rng(0)
    entries = []
    for label, count in enumerate(class_sizes(images)):
        folder = os.path.join(root, f"class{label:02d}")
        os.makedirs(folder, exist_ok=True)
        for _ in range(count):
            key = f"{len(entries):06d}"
            base = rng.uniform(0, 255, (h // 16, w // 16, 3)).astype(np.uint8)
            path = os.path.join(folder, f"{key}.jpg")
            Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
            entries.append((path, label, key))
    return entries


# -- the peers' per-sample work: torchvision's fastest CPU path -------------------------------------------

class PeerTransform:
    """JPEG bytes -> uint8 (3, CROP, CROP): decode_jpeg, then v2's random crop and flip."""

    def __init__(self):
        from torchvision.transforms import v2

        self.crop_flip = v2.Compose([v2.RandomCrop(CROP), v2.RandomHorizontalFlip()])

    def __call__(self, jpeg: bytes) -> torch.Tensor:
        from torchvision.io import decode_jpeg

        return self.crop_flip(decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)))


PEER = PeerTransform()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def streaming_dataset(local: str, batch_size: int, seed: int):
    """Streaming's dataset, each sample transformed as the peers' are (the subclass is made here, so
    that this script imports without the peers extra)."""
    from streaming import StreamingDataset

    class Images(StreamingDataset):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            return PEER(s["jpg"]), s["cls"], s["key"]

    return Images(local=local, shuffle=True, shuffle_seed=seed, batch_size=batch_size)


def litdata_sample(entry: tuple[str, int, str]) -> dict:
    path, label, key = entry
    return {"jpg": read_bytes(path), "cls": label, "key": key}


def litdata_transform(sample: dict):
    return PEER(sample["jpg"]), sample["cls"], sample["key"]


# -- conversions ------------------------------------------------------------------------------------------

def convert_ours(tree: str, out: str) -> float:
    """Seconds of pipelines/shard.py on the running Ray cluster, JPEGs kept as they are."""
    from pipelines.offline.sharding import ShardConfig, run

    started = time.perf_counter()
    run(ShardConfig(out=out, image_folder=tree, resize="keep", shard_samples=250))
    return time.perf_counter() - started


def convert_streaming(entries: list, out: str) -> float:
    from streaming import MDSWriter

    started = time.perf_counter()
    with MDSWriter(out=out, columns={"jpg": "bytes", "cls": "int", "key": "str"}, size_limit="64mb") as writer:
        for path, label, key in entries:
            writer.write({"jpg": read_bytes(path), "cls": label, "key": key})
    return time.perf_counter() - started


def convert_litdata(entries: list, out: str, workers: int) -> float:
    """litdata.optimize in a process of its own (it sets the start method to spawn); its own seconds."""
    spec = os.path.join(out + ".entries.json")
    with open(spec, "w") as f:
        json.dump(entries, f)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--litdata-optimize", spec, out,
                           str(workers)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"litdata.optimize failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def litdata_optimize(spec: str, out: str, workers: int) -> None:
    import litdata

    with open(spec) as f:
        entries = [tuple(e) for e in json.load(f)]
    started = time.perf_counter()
    litdata.optimize(fn=litdata_sample, inputs=entries, output_dir=out, chunk_bytes="64MB", num_workers=workers)
    print(time.perf_counter() - started)


# -- the loaders ------------------------------------------------------------------------------------------

def ours(shards: str, mode: str, workers: int, batch: int, seed: int = 0):
    from pipelines.online.loader import LoaderConfig, ShardLoader
    from pipelines.online.transforms import TrainTransform

    return ShardLoader(LoaderConfig(shards=shards, mode=mode, batch_size=batch, num_workers=workers, seed=seed),
                       TrainTransform(crop="random_crop", size=CROP), device="cpu")


def imagefolder(tree: str, workers: int, batch: int, seed: int = 0) -> DataLoader:
    from torchvision.datasets import ImageFolder

    return DataLoader(ImageFolder(tree, loader=read_bytes, transform=PEER), batch_size=batch, shuffle=True,
                      num_workers=workers, generator=torch.Generator().manual_seed(seed))


def webdataset(shards: str, workers: int, batch: int, seed: int = 0) -> DataLoader:
    """WebDataset reading our shards (they are its format): shard shuffle, a 1000-sample buffer."""
    import webdataset as wds

    with open(os.path.join(shards, "index.json")) as f:
        urls = [os.path.join(shards, s["url"]) for s in json.load(f)["shardlist"]]
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False).shuffle(1000)
          .to_tuple("jpg", "cls", "__key__").map_tuple(PEER, int, str))
    return DataLoader(ds, batch_size=batch, num_workers=workers, generator=torch.Generator().manual_seed(seed))


def streaming(local: str, workers: int, batch: int, seed: int = 0):
    from streaming import StreamingDataLoader
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    return StreamingDataLoader(streaming_dataset(local, batch, seed), batch_size=batch, num_workers=workers,
                               generator=torch.Generator().manual_seed(seed))


def litdata_loader(out: str, workers: int, batch: int, seed: int = 0):
    import litdata

    ds = litdata.StreamingDataset(out, shuffle=True, seed=seed, transform=litdata_transform)
    return litdata.StreamingDataLoader(ds, batch_size=batch, num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed))


# -- measuring --------------------------------------------------------------------------------------------

def busy_seconds() -> float:
    """The machine's CPU time spent not idle, over all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def one_pass(batches, normalize) -> dict:
    """One epoch of `batches` ((images, labels, ...) each), the peers' normalised here as ours are."""
    busy, started = busy_seconds(), time.perf_counter()
    images, counts = 0, Counter()
    for batch in batches:
        x = batch[0] if normalize is None else normalize(batch[0])
        images += len(x)
        counts.update(torch.as_tensor(batch[1]).tolist())
    wall = time.perf_counter() - started
    return {"img_s": images / wall, "cpu_ms": (busy_seconds() - busy) / images * 1000, "images": images,
            "rarest_class_share": min(counts.get(c, 0) for c in range(CLASSES)) / (images / CLASSES)}


def contenders(data: dict, workers: int, batch: int) -> dict:
    """name -> (a function making one epoch's batches, whether the main process normalises them)."""
    def our_epoch(mode):
        return lambda: ours(data["ours"], mode, workers, batch).epoch(0)

    return {"ours_uniform": (our_epoch("uniform"), False),
            "ours_class_aware": (our_epoch("class-aware"), False),
            "streaming": (lambda: streaming(data["streaming"], workers, batch), True),
            "litdata": (lambda: litdata_loader(data["litdata"], workers, batch), True),
            "webdataset": (lambda: webdataset(data["ours"], workers, batch), True),
            "imagefolder": (lambda: imagefolder(data["tree"], workers, batch), True)}


def loaders_table(data: dict, workers: int, batch: int, runs: int) -> dict:
    from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize

    normalize = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)
    passes: dict[str, list[dict]] = {}
    for _ in range(runs):  # contenders take turns, so drift in the machine's speed spreads over all
        for name, (epoch, peer) in contenders(data, workers, batch).items():
            passes.setdefault(name, []).append(one_pass(epoch(), normalize if peer else None))
            gc.collect()
    table = {}
    for name, got in passes.items():
        table[name] = {"img_s": round(statistics.median(p["img_s"] for p in got), 1),
                       "cpu_ms_per_image": round(statistics.median(p["cpu_ms"] for p in got), 3),
                       "images_per_epoch": got[0]["images"],
                       "rarest_class_share": round(got[0]["rarest_class_share"], 3)}
    best_peer = min(v["cpu_ms_per_image"] for k, v in table.items() if not k.startswith("ours"))
    for name in ("ours_uniform", "ours_class_aware"):
        table[name]["cpu_over_best_peer"] = round(table[name]["cpu_ms_per_image"] / best_peer, 3)
    return table


# -- resuming mid-epoch -----------------------------------------------------------------------------------

def first_batches(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def same(straight: list, resumed: list) -> dict:
    samples = all(torch.equal(torch.as_tensor(a[1]), torch.as_tensor(b[1])) and list(a[2:]) == list(b[2:])
                  for a, b in zip(straight, resumed))
    return {"resumable": True, "same_samples": samples,
            "same_pixels": all(torch.equal(a[0], b[0]) for a, b in zip(straight, resumed))}


def resume_ours(shards: str, mode: str, batch: int) -> dict:
    it = ours(shards, mode, 1, batch).epoch(0)
    straight = first_batches(it, RESUME_AFTER + RESUME_CHECK)[RESUME_AFTER:]
    it.close()
    first = ours(shards, mode, 1, batch)
    it = first.epoch(0)
    first_batches(it, RESUME_AFTER)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint carries it
    it.close()
    again = ours(shards, mode, 1, batch)
    again.load_state_dict(state)
    it = again.epoch(0)
    resumed = first_batches(it, RESUME_CHECK)
    it.close()
    return same(straight, resumed)


def resume_peer(make, where: str, batch: int) -> dict:
    """A peer's own resumable loader (`state_dict` / `load_state_dict`), seeded alike each time."""
    straight = first_batches(iter(make(where, 1, batch)), RESUME_AFTER + RESUME_CHECK)[RESUME_AFTER:]
    gc.collect()
    loader = make(where, 1, batch)
    it = iter(loader)
    first_batches(it, RESUME_AFTER)
    state = loader.state_dict()
    del it, loader
    gc.collect()
    loader = make(where, 1, batch)
    loader.load_state_dict(state)
    resumed = first_batches(iter(loader), RESUME_CHECK)
    del loader
    gc.collect()
    return same(straight, resumed)


def resume_rows(data: dict, batch: int) -> dict:
    return {"ours_uniform": resume_ours(data["ours"], "uniform", batch),
            "ours_class_aware": resume_ours(data["ours"], "class-aware", batch),
            "streaming": resume_peer(streaming, data["streaming"], batch),
            "litdata": resume_peer(litdata_loader, data["litdata"], batch),
            "webdataset": {"resumable": False}, "imagefolder": {"resumable": False}}


# -- the run ----------------------------------------------------------------------------------------------

def convert_all(tmp: str, geometry: str, images: int, fixed: dict) -> tuple[dict, dict]:
    """Every contender's copy of one geometry's corpus, and the conversion figures: whole runs, and
    shard.py's and litdata.optimize's marginal cost per image past their fixed start-up (`fixed`)."""
    root = os.path.join(tmp, geometry)
    data = {"tree": os.path.join(root, "tree"), "ours": os.path.join(root, "shards"),
            "streaming": os.path.join(root, "mds"), "litdata": os.path.join(root, "litdata")}
    entries = make_tree(data["tree"], geometry, images)
    ours_s = convert_ours(data["tree"], data["ours"])
    streaming_s = convert_streaming(entries, data["streaming"])
    litdata_s = convert_litdata(entries, data["litdata"], os.cpu_count() or 1)
    n = len(entries)
    ours_ms = (ours_s - fixed["ours"]) / (n - STARTUP_IMAGES) * 1000
    litdata_ms = (litdata_s - fixed["litdata"]) / (n - STARTUP_IMAGES) * 1000
    return data, {"ours_shard_py_ms_per_image": round(ours_ms, 3), "ours_shard_py_whole_run_s": round(ours_s, 2),
                  "litdata_optimize_ms_per_image": round(litdata_ms, 3),
                  "litdata_optimize_whole_call_s": round(litdata_s, 2),
                  "streaming_mdswriter_ms_per_image": round(streaming_s / n * 1000, 3),
                  "ours_over_litdata": round(ours_ms / litdata_ms, 3),
                  "ours_over_litdata_whole_runs": round(ours_s / litdata_s, 3)}


def fixed_startup(tmp: str) -> dict:
    """Seconds of a STARTUP_IMAGES-image conversion of each, after a warm-up one (Ray up, its workers
    started; litdata's modules in the page cache)."""
    root = os.path.join(tmp, "startup")
    entries = make_tree(os.path.join(root, "tree"), "256", STARTUP_IMAGES)
    convert_ours(os.path.join(root, "tree"), os.path.join(root, "warm-up"))
    convert_litdata(entries, os.path.join(root, "litdata-warm-up"), os.cpu_count() or 1)
    return {"ours": convert_ours(os.path.join(root, "tree"), os.path.join(root, "shards")),
            "litdata": convert_litdata(entries, os.path.join(root, "litdata"), os.cpu_count() or 1)}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "torchvision", "ray", "mosaicml-streaming", "litdata",
                                             "webdataset")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="JPEGs per geometry")
    p.add_argument("--runs", type=int, default=3, help="passes per contender; the median is reported")
    p.add_argument("--loader-workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES), default=sorted(GEOMETRIES))
    p.add_argument("--litdata-optimize", nargs=3, help=argparse.SUPPRESS)  # convert_litdata's own process
    a = p.parse_args(argv)
    if a.images < max((RESUME_AFTER + RESUME_CHECK) * a.batch_size, 2 * STARTUP_IMAGES):
        p.error(f"--images {a.images}: the resume check reads {RESUME_AFTER + RESUME_CHECK} batches of "
                f"--batch-size {a.batch_size}; give at least {(RESUME_AFTER + RESUME_CHECK) * a.batch_size}")
    if a.litdata_optimize:
        spec, out, workers = a.litdata_optimize
        return litdata_optimize(spec, out, int(workers))
    import ray

    result = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "images": a.images,
              "classes": CLASSES, "class_sizes": class_sizes(a.images), "batch": a.batch_size, "runs": a.runs,
              "work": "decode + random 224 crop + flip, uint8 batches, the same normalisation", **versions()}
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        fixed = fixed_startup(tmp)
        result["ours_shard_py_fixed_startup_s"] = round(fixed["ours"], 2)
        result["litdata_optimize_fixed_startup_s"] = round(fixed["litdata"], 2)
        corpora = {}
        for geometry in a.geometries:
            corpora[geometry], result[f"conversion_{geometry}"] = convert_all(tmp, geometry, a.images, fixed)
        ray.shutdown()
        torch.set_num_threads(1)  # the main process only normalises; the workers do the per-image work
        for geometry in a.geometries:
            for workers in a.loader_workers:
                result[f"loaders_{geometry}_{workers}_workers"] = loaders_table(corpora[geometry], workers,
                                                                               a.batch_size, a.runs)
        result["resume_after_3_batches"] = resume_rows(corpora[a.geometries[0]], a.batch_size)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
