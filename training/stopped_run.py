"""A run that cannot go on stops itself, without Ray Train's retries.

A non-finite training loss (the run diverged: a learning rate too high, a bad batch in fp16) would come
back the same after every restore from the last checkpoint, and forever with `run.max_failures: -1`.  So
the workers do not raise: every rank stops at the same step, rank 0 writes why into the run folder
(`stopped.json`), and the driver, finding it after `fit()`, says so and exits 1.  Checkpoints of the
diverged weights are never written.
"""

from __future__ import annotations

import json
import math

import torch
import torch.distributed as dist

from common.storage import Location

STOPPED_FILE = "stopped.json"


def all_finite(sums: dict, world: int, device) -> bool:
    """Whether every rank's loss sums are finite; every rank gets the same answer (an all-reduce)."""
    ok = torch.tensor([float(all(math.isfinite(float(v)) for v in sums.values()))], device=device)
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def diverged_reason(epoch: int, epochs: int, step: int, lr: float) -> str:
    return (f"the training loss became NaN or infinite in epoch {epoch + 1}/{epochs} (by step {step}, learning "
            f"rate {lr:g}): the run diverged; start again with a lower optim.lr (or optim.warmup_epochs)")


def write(run_path: str, reason: str) -> None:
    Location.write_atomic_uri(f"{run_path.rstrip('/')}/{STOPPED_FILE}", (json.dumps({"reason": reason}) + "\n").encode())


def reason(run_path: str) -> str | None:
    """Why the run at `run_path` stopped itself, or None."""
    folder = Location.parse(run_path)
    if not folder.exists(STOPPED_FILE):
        return None
    return json.loads(folder.read_bytes(STOPPED_FILE))["reason"]


def clear(run_path: str) -> None:
    """Forget an earlier attempt's stop (a --resume after lowering the learning rate)."""
    folder = Location.parse(run_path)
    if folder.exists(STOPPED_FILE):
        folder.remove(STOPPED_FILE)
