"""Training-step throughput: our models vs torchvision's equivalents, and relay vs bp for WM A and B.

    python benchmarks/model_step.py [--archs resnet18 vgg_d ...] [--batch-size N] [--size S] [--steps N]

Prints JSON.  On a GPU: bf16 autocast, channels_last, cuDNN autotuning, 224x224, with torch.compile off
and on.  On the CPU (this machine): fp32 at a small input (default 64x64), compile off.  Each figure is
a plain loop of forward + cross-entropy + backward + SGD(momentum) step on synthetic batches already
on the device, timed after warm-up steps; ours and the peer alternate for --rounds rounds and each
keeps its best, so neither gains from running first.  torchvision's VGG/AlexNet pool their last
feature map to 7x7/6x6 whatever the input; at a small input we give them the same classifier input as
ours so that the two networks compared are the same network ("classifier_resized": true).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common.tool_settings import add_old_spelling
from training.models import create_model

# ours -> (torchvision builder, note on what differs, if anything)
PEERS = {
    "resnet18": ("resnet18", ""), "resnet50": ("resnet50", ""), "resnext50_32x4d": ("resnext50_32x4d", ""),
    "vgg_d": ("vgg16", ""), "densenet121": ("densenet121", ""),
    "alexnet": ("alexnet", "torchvision's is the one-GPU variant (64-192-384-256-256, no LRN, no groups)"),
    "googlenet": ("googlenet", "torchvision's uses batch-norm; ours LRN, as the paper"),
}
WM = ("wm_model_a", "wm_model_b")


def peer(name: str, num_classes: int, size: int) -> tuple[nn.Module, bool]:
    builder = getattr(torchvision.models, PEERS[name][0])
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = builder(num_classes=num_classes, **kwargs)
    resized = False
    if name in ("vgg_d", "alexnet") and size != 224:
        ours = create_model(name, num_classes, mode="bp", input_size=size).backbone
        c, h, w = ours.head.in_shape
        model.avgpool = nn.Identity()
        index = 0 if name == "vgg_d" else 1
        model.classifier[index] = nn.Linear(c * h * w, 4096)
        resized = True
    return model, resized


def step_rate(model: nn.Module, batch: int, size: int, steps: int, device: str, ours: bool,
              compiled: bool) -> float:
    model = model.to(device).train()
    on_gpu = device == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if on_gpu:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def loss_fn(inputs, labels):
        return model(inputs, labels)["loss"] if ours else F.cross_entropy(model(inputs), labels)

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def one():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=on_gpu):
            loss = fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3 if compiled else 2):
        one()
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if on_gpu:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=[*PEERS, *WM])
    gpu = torch.cuda.is_available()
    p.add_argument("--batch-size", type=int, default=128 if gpu else 16)
    p.add_argument("--size", type=int, default=224 if gpu else 64)
    p.add_argument("--steps", type=int, default=20 if gpu else 4)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; each side's best is kept")
    add_old_spelling(p, "--batch", "--batch-size")
    a = p.parse_args()
    device = "cuda" if gpu else "cpu"
    torch.backends.cudnn.benchmark = gpu
    compile_modes = [False, True] if gpu else [False]
    result = {"device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores, "
              f"{platform.processor() or platform.machine()})", "torch": torch.__version__,
              "torchvision": torchvision.__version__, "batch": a.batch_size, "size": a.size,
              "bf16_channels_last": gpu, "models": {}, "relay_over_bp": {}}
    for name in a.archs:
        entry = {}
        for compiled in compile_modes:
            tag = "compiled" if compiled else "eager"
            options = {"input_size": a.size} if name in ("vgg_d", "alexnet") else {}
            contenders = {"ours": lambda: (create_model(name, 10, mode="bp", **options), True)}
            if name in PEERS:
                contenders["torchvision"] = lambda: (peer(name, 10, a.size)[0], False)
                entry["classifier_resized"] = peer(name, 10, a.size)[1]
                if PEERS[name][1]:
                    entry["note"] = PEERS[name][1]
            if name in WM:
                for mode in ("loss12_bp", "relay"):
                    contenders[mode] = lambda mode=mode: (create_model(name, 10, mode=mode), True)
            best = {k: 0.0 for k in contenders}
            for _ in range(a.rounds):  # alternate, keep each one's best: order and drift cancel out
                for key, build in contenders.items():
                    torch.manual_seed(0)
                    model, ours = build()
                    best[key] = max(best[key], step_rate(model, a.batch_size, a.size, a.steps, device, ours, compiled))
                    del model
            for key, rate in best.items():
                entry[f"{key}_{tag}_img_s"] = round(rate, 1)
            if name in PEERS:
                entry[f"ratio_{tag}"] = round(best["ours"] / best["torchvision"], 3)
            if name in WM:
                result["relay_over_bp"][f"{name}_{tag}"] = {
                    "relay_step_time_over_bp": round(best["ours"] / best["relay"], 3),
                    "relay_step_time_over_loss12_bp": round(best["loss12_bp"] / best["relay"], 3)}
        result["models"][name] = entry
        print(json.dumps({name: entry}), file=sys.stderr)  # progress
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
