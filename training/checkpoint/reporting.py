"""When a training run checkpoints, and how the checkpoint reaches storage.

Every epoch ends with a checkpoint (validated, scored by top-1 error).  A Places2 epoch is hours on one
node, so `run.checkpoint_every_steps` and `run.checkpoint_every_s` add checkpoints inside an epoch:
model, optimiser, schedule, every rank's exact input-stream state and its `EpochTally`, so a failure
loses at most one interval and the resumed epoch consumes the same batches and reports the same
metrics as an uninterrupted one.

Mid-epoch checkpoints go up with Ray Train's asynchronous upload
(`ray.train.report(..., checkpoint_upload_mode=CheckpointUploadMode.ASYNC)`): the step loop goes on
while a background thread copies the folder to `run.storage_path` (S3 included) and then deletes the
local copy.  They are reported with `top1_error` = inf (not validated), so the run's best-checkpoint
ranking never prefers them and `run.num_to_keep` deletes them first, except the latest, which Ray Train
always keeps for recovery.  A worker killed during that upload leaves its local folder behind (a
model's size, on every node a preemption hits): the folders are named after the process writing them,
and the next checkpoint written on the node removes those whose process has died.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time

import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointUploadMode

from training.checkpoint import contents

FOLDER_PREFIX = "places-checkpoint-"
PROBE_STEPS = 20  # how often the ranks agree whether checkpoint_every_s has passed (one tiny all-reduce)


class MidEpochPolicy:
    """Whether to checkpoint after step `done` of the epoch.  Every rank reaches the same answer at the
    same step (a checkpoint gathers every rank's stream state), so time is compared only every
    PROBE_STEPS steps, the ranks taking the latest clock; and only while every rank still has batches
    (uniform epochs may end one batch apart), since the epoch-end checkpoint follows anyway."""

    def __init__(self, every_steps: int, every_s: float, world: int, device):
        self.every_steps, self.every_s, self.world, self.device = every_steps, every_s, world, device
        self.last = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return bool(self.every_steps or self.every_s)

    def due(self, done: int, common_steps: int) -> bool:
        if done >= common_steps:
            return False
        if self.every_steps and done % self.every_steps == 0:
            return True
        if self.every_s and done % PROBE_STEPS == 0:
            late = torch.tensor(float(time.perf_counter() - self.last >= self.every_s), device=self.device)
            if self.world > 1:
                dist.all_reduce(late, op=dist.ReduceOp.MAX)
            return bool(late)
        return False

    def saved(self) -> None:
        self.last = time.perf_counter()


def report_checkpoint(payload: dict | None, metrics: dict, upload_async: bool = False) -> None:
    """`ray.train.report` with a checkpoint of `payload` (rank 0 passes it, the others None).  Async:
    Ray Train uploads in the background and deletes the local folder afterwards."""
    folder = None
    checkpoint = None
    if payload is not None:
        remove_orphaned_folders()
        folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        contents.save(folder, payload)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
    if upload_async:
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)
        return
    try:
        ray.train.report(metrics, checkpoint=checkpoint)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def remove_orphaned_folders(root: str | None = None) -> list[str]:
    """Remove the local checkpoint folders (in `root`, the temp folder by default) of processes that no
    longer run: what killed workers left mid-upload.  Returns the removed paths."""
    root = root or tempfile.gettempdir()
    removed = []
    for name in os.listdir(root):
        pid = name[len(FOLDER_PREFIX):].split("-")[0] if name.startswith(FOLDER_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(os.path.join(root, name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def mid_epoch_metrics(epoch: int, step: int, done: int, steps: int, lr: float) -> dict:
    """What a mid-epoch checkpoint is reported with: where it is, and no validation score."""
    return {"epoch": epoch, "step": step, "epoch_step": done, "epoch_steps": steps, "top1_error": math.inf,
            "top5_error": math.inf, "mid_epoch": True, "lr": lr}
