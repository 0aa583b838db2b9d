"""A Train worker's side of `data.ingest: ray_data` (`ingest_pipeline`): batches from the worker's dataset shard,
with `ShardLoader`'s interface (`epoch(e)`, steps, skipped samples, state for checkpoints), so the
training loop does not care which ingest feeds it.

A checkpoint holds, per rank, the positions of the current epoch it has consumed (as [lo, hi)
intervals).  Restored, the union over the ranks is what the epoch no longer needs: the plan rank 0
posts lists the rest, so the resumed epoch trains every position once in all.
"""

from __future__ import annotations

import math

import numpy as np
import ray
import ray.train
import torch.distributed as dist

from pipelines.online.catalog import Catalog
from pipelines.online.ingest_pipeline import DATASET, IngestSpec
from pipelines.online.streams import UniformStream, class_aware_epoch_steps


def merge(intervals: list) -> list[list[int]]:
    """Sorted, disjoint [lo, hi) intervals covering the given ones."""
    out: list[list[int]] = []
    for lo, hi in sorted(map(tuple, intervals)):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        elif lo < hi:
            out.append([lo, hi])
    return out


def subtract(lo: int, hi: int, done: list) -> list[list[int]]:
    """[lo, hi) less the (merged) intervals `done`."""
    todo, start = [], lo
    for a, b in merge(done):
        if a > start:
            todo.append([start, min(a, hi)])
        start = max(start, b)
        if start >= hi:
            break
    if start < hi:
        todo.append([start, hi])
    return [t for t in todo if t[0] < t[1]]


def runs(positions: np.ndarray) -> list[list[int]]:
    """Consumed positions -> merged [lo, hi) intervals."""
    if not len(positions):
        return []
    p = np.unique(positions)
    breaks = np.flatnonzero(np.diff(p) != 1)
    starts, ends = np.r_[0, breaks + 1], np.r_[breaks, len(p) - 1]
    return [[int(p[a]), int(p[b]) + 1] for a, b in zip(starts, ends)]


class RayDataInput:
    """Normalised (images, labels) batches of `batch_size` on `device`; `plan` is the run's `EpochPlan`."""

    def __init__(self, spec: IngestSpec, plan, rank: int, world_size: int, batch_size: int, device,
                 channels_last: bool = False, prefetch: int = 2):
        self.spec, self.plan, self.rank, self.world_size = spec, plan, rank, world_size
        self.batch_size, self.device, self.channels_last, self.prefetch = batch_size, device, channels_last, prefetch
        self.catalog = Catalog.load(spec.shards)
        self.normalize = spec.transform.batch_normalizer()
        self._shard = ray.train.get_dataset_shard(DATASET)
        self._epoch: int | None = None  # the epoch in progress (or restored), None between epochs
        self._in_epoch = 0  # batches of it consumed
        self._done: list = []  # its positions consumed before a restore (by every rank)
        self._consumed: list[np.ndarray] = []  # its positions this rank consumed since
        self._skipped = 0
        self._chunk = spec.chunk  # positions per data task, this epoch
        self._common = self._uniform_floor(self.catalog.total)

    @property
    def samples_per_epoch(self) -> int:
        return UniformStream.rank_length(self.catalog, self.rank, self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Class-aware: every rank the same (the split is equal).  Uniform: this rank's expected share."""
        if self.spec.mode == "class-aware":  # the loader's, so an epoch draws the same samples
            return class_aware_epoch_steps(self.catalog, self.world_size, self.batch_size)
        return math.ceil(self.samples_per_epoch / self.batch_size)

    @property
    def common_steps(self) -> int:
        """Steps every rank is sure to take this epoch.  Uniform: rows go to the rank that has received the
        fewest, a task's block at a time, so shares differ by at most one block."""
        return self.steps_per_epoch if self.spec.mode == "class-aware" else self._common

    def _uniform_floor(self, remaining: int) -> int:
        return max(0, (remaining // self.world_size - self._chunk) // self.batch_size)

    @property
    def skipped(self) -> int:
        return self._skipped

    @property
    def last_positions(self) -> np.ndarray:
        """The epoch positions of the batch last yielded, unreadable ones included: for audits of what trained."""
        return self._consumed[-1] if self._consumed else np.zeros(0, np.int64)

    def epoch_positions(self, epoch: int) -> tuple[int, int]:
        """[lo, hi) of the epoch's positions: uniform, the epoch's shuffle; class-aware, the job's WM draws."""
        if self.spec.mode == "uniform":
            return 0, self.catalog.total
        n = self.steps_per_epoch * self.batch_size * self.world_size
        return epoch * n, (epoch + 1) * n

    def epoch(self, epoch: int):
        """This rank's batches of `epoch`; after `restore`, of what the epoch still needs.  The plan is
        posted here, not when the batches are first asked for, so `common_steps` is this epoch's."""
        lo, hi = self.epoch_positions(epoch)
        if self._epoch != epoch:
            self._done, self._consumed, self._in_epoch = [], [], 0
        todo = subtract(lo, hi, self._done)
        remaining = sum(b - a for a, b in todo)
        # at least 4 tasks per rank, so that a small epoch is not one rank's single block
        self._chunk = min(self.spec.chunk, max(1, remaining // (4 * self.world_size)))
        self._common = self._in_epoch + self._uniform_floor(remaining)
        if self.rank == 0:
            ray.get(self.plan.post.remote({"epoch": epoch, "todo": todo, "chunk": self._chunk}))
        if self.world_size > 1:  # nobody starts the epoch's execution before its plan is posted
            dist.barrier()
        self._epoch = epoch
        return self._batches(epoch)

    def _batches(self, epoch: int):
        cuda = self.device.type == "cuda"
        shuffle = self.spec.block > 1 and self.spec.mode == "uniform"  # mixes a block's neighbours
        for batch in self._shard.iter_torch_batches(
                batch_size=self.batch_size, prefetch_batches=self.prefetch, device="cpu", pin_memory=cuda,
                local_shuffle_buffer_size=4 * self.batch_size if shuffle else None,
                local_shuffle_seed=hash((self.spec.seed, epoch, self.rank)) % 2**31 if shuffle else None):
            ok = batch["ok"]
            self._consumed.append(batch["position"].numpy())
            self._in_epoch += 1
            bad = int((~ok).sum())
            if bad == len(ok):
                raise RuntimeError(f"epoch {epoch + 1}: a batch of {len(ok)} samples that are all unreadable: see "
                                   f"the skipped-sample warnings in the Ray Data task logs")
            self._skipped += bad
            images, extras, labels = batch["image"], batch["extra"], batch["label"]
            if bad:
                images, extras, labels = images[ok], extras[ok], labels[ok]
            images = images.to(self.device, non_blocking=cuda)
            if images.dim() == 4:  # HWC rows (a video's clip rows are (3, T, S, S) already)
                images = images.permute(0, 3, 1, 2)  # channels-last
                if not self.channels_last:
                    images = images.contiguous()
            yield self.normalize(images, extras), labels.to(self.device, non_blocking=cuda)
        self._epoch, self._in_epoch, self._done, self._consumed = None, 0, [], []

    def state_dict(self) -> dict:
        consumed = runs(np.concatenate(self._consumed)) if self._consumed else []
        return {"ingest": "ray_data", "mode": self.spec.mode, "epoch": self._epoch, "in_epoch": self._in_epoch,
                "consumed": merge(self._done + consumed), "skipped": self._skipped}

    def restore(self, states: list[dict]) -> str:
        """Continue from every rank's saved state (a checkpoint's `streams`): the saved epoch's positions
        that no rank had consumed.  States of the other ingest or mode: the epoch starts afresh."""
        if not all(s.get("ingest") == "ray_data" and s["mode"] == self.spec.mode for s in states):
            return "restarted"
        same_world = len(states) == self.world_size
        mine = states[self.rank] if same_world else {"skipped": 0, "in_epoch": 0}
        self._skipped = mine["skipped"]
        epochs = {s["epoch"] for s in states}
        if epochs != {None}:
            self._epoch = next(e for e in epochs if e is not None)
            self._done = merge([i for s in states for i in s["consumed"]])
            self._in_epoch = mine["in_epoch"]
        return "exact" if same_world else "continued with the epoch's remaining positions"
