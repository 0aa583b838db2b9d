"""Evaluation throughput: `training/evaluate.py`'s Ray Data batch inference vs torchvision's reference
evaluation loop (ImageFolder + DataLoader + the model in batches), same images, model and protocol.

    python benchmarks/eval_throughput.py [--images 1000] [--arch resnet18] [--protocols center ten_crop]
        [--size 224] [--batch-size 32] [--loader-workers N]

Prints JSON: images/s of each, per protocol.  Ours reads the shards made from the same JPEG tree
(256x256, passed through byte for byte) and runs `predict()` with one model actor (on the GPU when
there is one) behind CPU decode tasks; the peer's DataLoader gets every CPU but one for decoding.
Both score every view and average the softmax per image; both times include their own start-up
(Ray Data's planning and actor start; the DataLoader's worker start), not Ray's or the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from loader_throughput import make_tree
from common.tool_settings import add_old_spelling
from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD
from training.checkpoint import contents
from training.config import load, to_dict
from training.inference import predict
from training.models import build_model


def peer_rate(tree: str, model: torch.nn.Module, protocol: str, size: int, batch: int, workers: int,
              device: torch.device) -> float:
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if protocol == "center":
        transform = T.Compose([T.Resize(256), T.CenterCrop(size), normalize])
    else:  # torchvision's ten-crop recipe
        transform = T.Compose([T.Resize(256), T.TenCrop(size), T.Lambda(lambda crops: torch.stack(
            [normalize(c) for c in crops]))])
    loader = DataLoader(ImageFolder(tree, transform=transform), batch_size=batch, num_workers=workers,
                        pin_memory=device.type == "cuda")
    count, start = 0, time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            views = x if x.dim() == 5 else x[:, None]
            scores = model(views.flatten(0, 1).to(device, non_blocking=True)).softmax(1)
            scores.view(*views.shape[:2], -1).mean(1).cpu()
            count += len(x)
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--protocols", nargs="+", default=["center", "ten_crop"], choices=["center", "ten_crop"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="peer's decode workers")
    add_old_spelling(p, "--batch", "--batch-size")
    add_old_spelling(p, "--workers", "--loader-workers")
    a = p.parse_args()
    import ray

    from pipelines.offline.sharding import ShardConfig, run

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    result = {"images": a.images, "arch": a.arch, "size": a.size, "batch": a.batch_size,
              "peer_workers": a.loader_workers,
              "device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)", "protocols": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tree, shards = os.path.join(tmp, "tree"), os.path.join(tmp, "shards")
        make_tree(tree, a.images)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        run(ShardConfig(out=shards, image_folder=tree, shard_samples=250))
        cfg = load(None, [f"model.name={a.arch}", "model.num_classes=10", "model.mode=bp"])
        torch.manual_seed(0)
        model = build_model(cfg)
        os.makedirs(os.path.join(tmp, "checkpoint"))
        contents.save(os.path.join(tmp, "checkpoint"), {"model": model.state_dict(), "config": to_dict(cfg)})
        checkpoint = os.path.join(tmp, "checkpoint", contents.CHECKPOINT_FILE)
        exported = model.export().to(device).eval()
        for protocol in a.protocols:
            start = time.perf_counter()
            out = predict([checkpoint], shards, protocol, (256,), a.size, 1, gpu, a.batch_size)
            ours = len(out["key"]) / (time.perf_counter() - start)
            assert len(out["key"]) == a.images
            peer = peer_rate(tree, exported, protocol, a.size, a.batch_size, a.loader_workers, device)
            result["protocols"][protocol] = {"ours_img_s": round(ours, 1), "torchvision_img_s": round(peer, 1),
                                             "ours_over_torchvision": round(ours / peer, 3)}
            print(json.dumps({protocol: result["protocols"][protocol]}), file=sys.stderr)
        ray.shutdown()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
