"""Training throughput, per architecture, all in one run:
(a) torchvision's model in a plain loop on synthetic batches already on the device (eager; compiled on GPU);
(b) our training step (`model(x, y)["loss"]`, relay-capable model) on the same synthetic batches;
(c) our whole pipeline from shards: class-aware `ShardLoader` (CPU decode; on a GPU also nvJPEG decode,
    and the hybrid of the two, `data.decode: hybrid`, with the share of each batch the GPU ended with)
    feeding the same training step;
(d) the product: `training/run.py`'s TorchTrainer (one Ray Train worker, CPU decode; on a GPU also
    hybrid decode) training from the same shards for `--trainer-epochs` epochs; its `images_per_s`
    metric of the last epoch;
(e) the same trainer with `data.ingest: ray_data`: the worker takes 1 CPU, Ray Data tasks decode on the
    others (on a cluster: on any node).

    python benchmarks/train_throughput.py [--archs resnet50 ...] [--batch-size N] [--size S] [--steps N]
        [--pipeline-steps N] [--trainer-epochs N] [--compile both|off|on] [--columns a b c d e]
        [--data DIR] [--out FILE]

Prints JSON.  On a GPU: bf16 autocast, channels_last, 224x224, cuDNN autotuning on for every contender
(the trainer's default, and torchvision's reference script's).  On the CPU (this machine): fp32 at a
small input, where (c) shares the two cores between data workers and the model.  The shards are
generated 256x256 JPEGs (pipelines/shard.py passes them through), 10 classes, imbalanced.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch

from model_step import PEERS, peer, step_rate
from common.storage import Location
from common.tool_settings import add_old_spelling
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.transforms import TrainTransform
from training.models import create_model

DECODE_TAGS = {"workers": "cpu", "device": "gpu", "hybrid": "hybrid"}  # data.decode -> the JSON keys' tag

ARCHS = ["resnet50", "resnet18", "vgg_d", "alexnet", "googlenet", "wm_model_a", "wm_model_b"]


def make_shards(root: str, images: int, name: str) -> str:
    """`images` generated 256x256 JPEGs sharded into root/name; shards a finished earlier run left there
    (its manifest, written last) are reused."""
    import numpy as np
    import ray
    from PIL import Image

    from pipelines.offline.sharding import ShardConfig, run

    out = os.path.join(root, name)
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    rng = np.random.default_rng(0)
    tree = os.path.join(root, f"{name}-tree")
    for i in range(images):
        cls = min(9, int(rng.exponential(3)))  # imbalanced, as Places2
        folder = os.path.join(tree, f"class{cls}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.uniform(0, 255, (16, 16, 3)).astype(np.uint8)).resize((256, 256)).save(
            os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    run(ShardConfig(out=out, image_folder=tree, shard_samples=200))
    ray.shutdown()
    return out


def pipeline_rate(name: str, shards: str, batch: int, size: int, steps: int, device: str, decode: str,
                  loader_workers: int) -> tuple[float, float | None]:
    """(img/s, the share of each batch the GPU decoded at the end: hybrid only)."""
    options = {"input_size": size} if name in ("vgg_d", "alexnet") else {}
    model = create_model(name, 10, mode="bp", **options).to(device).train()
    on_gpu = device == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = ShardLoader(LoaderConfig(shards=shards, mode="class-aware", batch_size=batch,
                                      num_workers=loader_workers, decode=decode),
                         TrainTransform(crop="rrc", size=size), device=device, channels_last=on_gpu)
    batches = (batch for epoch in itertools.count() for batch in loader.epoch(epoch))
    # Warm up past the batches DataLoader prefetches (2 per worker), so that a loader slower than the
    # model cannot look fast by serving its initial queue inside the timed window.
    warmup = 2 * loader_workers + 2
    count, start = 0, None
    for i in range(steps + warmup):
        x, y = next(batches)
        if on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=on_gpu):
            loss = model(x, y)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == warmup - 1:
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
        elif i >= warmup:
            count += len(y)
    if on_gpu:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start), (loader.share.value if loader.share is not None else None)


def trainer_rate(name: str, shards: str, val_shards: str, a: argparse.Namespace, storage: str, gpu: bool,
                 ingest: str = "loader", decode: str = "workers") -> float:
    from training.config import load
    from training.trainer import make_trainer

    # loader: the worker holds its DataLoader processes' CPUs; ray_data: one CPU, the rest for Ray Data's tasks
    cpus = min(os.cpu_count(), a.loader_workers + 1) if ingest == "loader" else 1

    options = {"input_size": a.size} if name in ("vgg_d", "alexnet") else {}
    cfg = load(None, [f"model.name={name}", "model.num_classes=10", "model.mode=bp",
                      f"model.options={json.dumps(options)}", f"data.train_shards={shards}",
                      f"data.val_shards={val_shards}", f"data.batch_size={a.batch_size}", f"data.size={a.size}",
                      f"data.eval_resize={round(a.size * 8 / 7)}", f"data.loader_workers={a.loader_workers}",
                      f"run.epochs={a.trainer_epochs}", "run.workers=1", f"run.gpu={str(gpu).lower()}",
                      f"run.cpus_per_worker={cpus}", f"data.ingest={ingest}", f"data.decode={decode}",
                      f"run.storage_path={storage}", "run.num_to_keep=1"])
    result = make_trainer(cfg, f"{name}-{ingest}-{decode}-{time.strftime('%H%M%S')}").fit()
    if result.error:
        raise result.error
    return result.metrics["images_per_s"]


def synthetic(name: str, a: argparse.Namespace, device: str) -> dict:
    """(a) and (b), eager and/or compiled."""
    entry = {}
    options = {"input_size": a.size} if name in ("vgg_d", "alexnet") else {}
    for compiled in {"both": [False, True], "off": [False], "on": [True]}[a.compile]:
        tag = "compiled" if compiled else "eager"
        if "a" in a.columns and name in PEERS:
            entry[f"a_torchvision_{tag}_img_s"] = round(
                step_rate(peer(name, 10, a.size)[0], a.batch_size, a.size, a.steps, device, False, compiled), 1)
        if "b" in a.columns:
            model = create_model(name, 10, mode="bp", **options)
            entry[f"b_ours_synthetic_{tag}_img_s"] = round(
                step_rate(model, a.batch_size, a.size, a.steps, device, True, compiled), 1)
    return entry


def from_shards(name: str, a: argparse.Namespace, device: str, shards: str | None, val_shards: str | None,
                storage: str) -> dict:
    """(c), (d) and (e)."""
    gpu = device == "cuda"
    entry = {}
    decodes = ["workers", "device", "hybrid"] if gpu else ["workers"]
    for decode in decodes if "c" in a.columns else []:
        rate, share = pipeline_rate(name, shards, a.batch_size, a.size, a.pipeline_steps, device, decode,
                                    a.loader_workers)
        entry[f"c_ours_from_shards_{DECODE_TAGS[decode]}_decode_img_s"] = round(rate, 1)
        if share is not None:
            entry["c_hybrid_gpu_share"] = round(share, 3)
    runs = [("d_trainer_img_s", "loader", "workers")] if "d" in a.columns else []
    runs += [("d_trainer_hybrid_img_s", "loader", "hybrid")] if runs and gpu else []
    runs += [("e_trainer_ray_data_img_s", "ray_data", "workers")] if "e" in a.columns else []
    for key, ingest, decode in runs:
        entry[key] = round(trainer_rate(name, shards, val_shards, a, storage, gpu, ingest, decode), 1)
    return entry


def with_ratios(entry: dict) -> dict:
    """`entry` with each column's ratio to (a), eager and compiled."""
    for tag in ("eager", "compiled"):
        peer_rate = entry.get(f"a_torchvision_{tag}_img_s")
        if not peer_rate:
            continue
        ratios = {"b": f"b_ours_synthetic_{tag}_img_s", "d": "d_trainer_img_s",
                  "d_hybrid": "d_trainer_hybrid_img_s", "e": "e_trainer_ray_data_img_s"}
        ratios.update({f"c_{where}_decode": f"c_ours_from_shards_{where}_decode_img_s"
                       for where in DECODE_TAGS.values()})
        for short, key in ratios.items():
            if key in entry:
                entry[f"{short}_over_a_{tag}"] = round(entry[key] / peer_rate, 3)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--columns", nargs="+", choices=list("abcde"), default=list("abcde"),
                   help="which of (a)-(e) to measure (default: all)")
    p.add_argument("--batch-size", type=int, default=256 if gpu else 16)
    p.add_argument("--size", type=int, default=224 if gpu else 64)
    p.add_argument("--steps", type=int, default=30 if gpu else 4, help="timed steps of (a) and (b)")
    p.add_argument("--pipeline-steps", type=int, default=100 if gpu else 4, help="timed steps of (c)")
    p.add_argument("--images", type=int, default=20000 if gpu else 1500)
    p.add_argument("--loader-workers", type=int, default=12 if gpu else 2)
    p.add_argument("--compile", choices=["both", "off", "on"], default="both" if gpu else "off",
                   help="(a) and (b) eager, compiled or both; (c)-(e) are always eager")
    p.add_argument("--trainer-epochs", type=int, default=2, help="epochs of (d) and (e), the last one timed")
    p.add_argument("--data", help="folder for the generated shards, kept and reused by later runs with the "
                                  "same --images (default: a temporary folder)")
    p.add_argument("--out", help="also write the JSON here, rewritten after each architecture, so that a run "
                                 "cut short keeps the architectures it finished")
    add_old_spelling(p, "--batch", "--batch-size")
    a = p.parse_args()
    if a.trainer_epochs < 1:
        p.error("--trainer-epochs must be at least 1 (leave d and e out of --columns instead)")
    device = "cuda" if gpu else "cpu"
    torch.backends.cudnn.benchmark = gpu
    result = {"device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
              "torch": torch.__version__, "batch": a.batch_size, "size": a.size, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or tmp
        shards = make_shards(data, a.images, f"shards-{a.images}") if set(a.columns) & set("cde") else None
        trainer = bool(set(a.columns) & set("de"))
        val_shards = make_shards(data, 4 * a.batch_size, f"val-{4 * a.batch_size}") if trainer else None

        def save(name: str, entry: dict) -> None:
            result["models"][name] = with_ratios(entry)
            print(json.dumps({name: entry}), file=sys.stderr)  # progress
            if a.out:
                Location.write_atomic_uri(a.out, (json.dumps(result, indent=1) + "\n").encode())

        # (a) and (b) of every architecture first, while no Ray process runs beside them: on 2 cores, an (a)
        # timed between trainer runs read 10-25% lower
        for name in a.archs:
            save(name, synthetic(name, a, device))
        if trainer:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        for name in a.archs if shards else []:
            save(name, {**result["models"][name],
                        **from_shards(name, a, device, shards, val_shards, os.path.join(tmp, "runs"))})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
