"""Places365-Challenge on a GPU cluster, on paper: the arithmetic of docs/scaling.md, from the figures the
other benchmarks measured (their JSON under benchmarks/results/) and the cluster's published specs.

    python benchmarks/scaling.py [--nodes 4] [--gpus-per-node 8] [--vcpus-per-node 192] [--read-block 1]

Measured inputs (read from the result files, named in the output):
- per-GPU training rate of each architecture: torchvision's synthetic step on one H100, the peer
  baseline our trainer is held to (`train_throughput.py`, (a) eager and compiled);
- decode + augment rate per CPU core of our loader, uniform and class-aware (`loader_throughput.py` on
  the H100 host);
- sharding cost per core (`shard_throughput.py`, JPEG resize and passthrough).
Computed here with the repo's own code: bytes per sample in a shard (`tar_shard.build_shard` on a sample
of the published mean JPEG size) and checkpoint bytes (model + SGD momentum, our architectures built
for 365 classes).  Assumed, and printed as assumptions: the published mean JPEG sizes of the Places365
archives, the cluster's specs, AWS's documented S3 request rate per prefix, and upload bandwidths.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipelines.offline.tar_shard import build_shard
from training.models import create_model

RESULTS = os.path.join(ROOT, "benchmarks", "results", "h100")
PLACES365_CHALLENGE = 8_026_628
# Published archive sizes / image counts of Places365-Challenge (places2.csail.mit.edu/download.html):
# train_256 108 GB, train_large (shorter side 512) 476 GB, for 8,026,628 images.
MEAN_JPEG_BYTES = {"data_256": 108e9 / PLACES365_CHALLENGE, "data_large": 476e9 / PLACES365_CHALLENGE}
S3_GET_PER_PREFIX = 5_500  # AWS: "at least 5,500 GET/HEAD requests per second per partitioned prefix"
SHARD_SAMPLES = 1000  # pipelines/shard.py's default --shard-samples
ARCHS = ("resnet18", "resnet50", "vgg_d", "alexnet", "googlenet")


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def shard_bytes_per_sample(jpeg_bytes: int) -> int:
    """What one sample occupies in a shard of SHARD_SAMPLES: its cls, jpg and json members with their tar
    headers, and its share of the archive's end blocks and record padding."""
    meta = json.dumps({"source": "/a/airfield/00000001.jpg", "orig_size": [256, 256]}, sort_keys=True).encode()
    jpeg = bytes(jpeg_bytes)
    samples = [{"__key__": f"{i:08d}", "cls": b"0", "jpg": jpeg, "json": meta} for i in range(SHARD_SAMPLES)]
    return round(len(build_shard(samples).data) / SHARD_SAMPLES)


def checkpoint_bytes(arch: str, classes: int) -> int:
    """fp32 weights and buffers plus one SGD momentum buffer per trainable parameter."""
    with torch.device("meta"):
        net = create_model(arch, classes)
    state = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    return state + momentum


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=4, help="GPU nodes (p5.48xlarge: 8 H100, 192 vCPUs)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--vcpus-per-node", type=int, default=192)
    p.add_argument("--images", type=int, default=PLACES365_CHALLENGE)
    p.add_argument("--classes", type=int, default=365)
    p.add_argument("--read-block", type=int, default=1, help="samples per range read (data.read_block)")
    p.add_argument("--upload-mb-s", type=float, nargs="+", default=[100.0, 1000.0],
                   help="assumed checkpoint upload rates to S3 (one stream; many parallel parts)")
    a = p.parse_args()

    eager, compiled = load("train_throughput_eager.json"), load("train_throughput_compiled.json")
    loader, sharding = load("loader_throughput.json"), load("shard_throughput.json")
    decode_per_core = {"uniform": loader["uniform_img_s_per_core"], "class_aware": loader["class-aware_img_s_per_core"]}
    gpus = a.nodes * a.gpus_per_node
    sample_bytes = {k: shard_bytes_per_sample(round(v)) for k, v in MEAN_JPEG_BYTES.items()}

    models = {}
    for arch in ARCHS:
        per_gpu = eager["models"][arch]["a_torchvision_eager_img_s"]
        per_gpu_compiled = compiled["models"].get(arch, {}).get("a_torchvision_compiled_img_s")
        cluster = per_gpu * gpus
        ckpt = checkpoint_bytes(arch, a.classes)
        cores_per_gpu = {k: round(per_gpu / v, 1) for k, v in decode_per_core.items()}
        worst_cores = max(cores_per_gpu.values()) * a.gpus_per_node
        requests = cluster / a.read_block
        models[arch] = {
            "gpu_img_s_eager": per_gpu, "gpu_img_s_compiled": per_gpu_compiled,
            "cluster_img_s": round(cluster), "epoch_minutes": round(a.images / cluster / 60, 1),
            "read_gb_s_per_node": {k: round(cluster / a.nodes * b / 1e9, 2) for k, b in sample_bytes.items()},
            "s3_get_per_s": round(requests),
            "s3_partitioned_prefixes_needed": math.ceil(requests / S3_GET_PER_PREFIX),
            "decode_cores_per_gpu": cores_per_gpu,
            "decode_cores_per_node_worst": round(worst_cores),
            "decode_fits_on_gpu_nodes": worst_cores + a.gpus_per_node <= a.vcpus_per_node,
            "cpu_nodes_32_vcpu_to_add": max(0, math.ceil((worst_cores + a.gpus_per_node - a.vcpus_per_node)
                                                         * a.nodes / 32)),
            "checkpoint_mb": round(ckpt / 2**20, 1),
            "checkpoint_upload_s": {f"{r:g}_mb_s": round(ckpt / 2**20 / r, 1) for r in a.upload_mb_s},
        }

    resize = max(r["ours_img_s_per_core"] for r in sharding["runs"] if r["kind"] == "resize")
    passthrough = max(r["ours_img_s_per_core"] for r in sharding["runs"] if r["kind"] == "passthrough")
    out = {
        "assumed": {"nodes": a.nodes, "gpus_per_node": a.gpus_per_node, "vcpus_per_node": a.vcpus_per_node,
                    "images": a.images, "mean_jpeg_bytes": {k: round(v) for k, v in MEAN_JPEG_BYTES.items()},
                    "s3_get_per_prefix_s": S3_GET_PER_PREFIX, "read_block": a.read_block,
                    "upload_mb_s": a.upload_mb_s},
        "measured_from": {"gpu": eager["device"], "decode_img_s_per_core": decode_per_core,
                          "shard_img_s_per_core": {"resize": resize, "passthrough": passthrough}},
        "shard_bytes_per_sample": sample_bytes,
        "bytes_per_epoch_gb": {k: round(a.images * b / 1e9, 1) for k, b in sample_bytes.items()},
        "shards_at_most": math.ceil(a.images / SHARD_SAMPLES) + a.classes,
        "sharding_core_hours": {"resize": round(a.images / resize / 3600, 1),
                                "passthrough": round(a.images / passthrough / 3600, 1)},
        "models": models,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
