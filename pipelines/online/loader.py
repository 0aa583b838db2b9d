"""Batches for one training rank, from a uniform or class-aware stream, resumable to the exact batch.

    loader = ShardLoader(LoaderConfig(shards="data/demo/shards/train", mode="class-aware"), transform,
                         rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
    for epoch in range(start, epochs):
        for images, labels in loader.epoch(epoch): ...
        checkpoint["stream"] = loader.state_dict()      # and later: loader.load_state_dict(...)

Each DataLoader worker runs its own stream (uniform: its share of the epoch; class-aware: its share of
the job's one WM sequence, `wm_sequence`) and batches inside it; every batch carries its worker's
stream state, so the main process always knows where each worker is *as consumed*, whatever was
prefetched.  On restore, worker roles are rotated so that DataLoader's
round-robin resumes with the worker that was next.  Augmentation randomness is drawn per sample from
(seed, rank, worker, draw number), so it needs no state of its own.

Uniform epochs are finite (the rank's exact share, last batch partial, no padding); class-aware
streams are endless and continue across epochs, `steps_per_epoch` batches each.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.hashing import stable_hash
from pipelines.offline.attributes import decode as decode_attributes
from pipelines.offline.corpus import decode_labels
from pipelines.online.catalog import Catalog
from pipelines.online.clips import ClipTransform
from pipelines.online.device_decode import BatchParts, DecodeShare, RankBatch, assemble
from pipelines.online.streams import (ClassAwareStream, SequentialStream, UniformStream, class_aware_epoch_steps,
                                      split_range)
from pipelines.online.transforms import EvalTransform, TrainTransform
from pipelines.online.wm_sequence import job_draw, stream_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderConfig:
    shards: str
    mode: str = "class-aware"  # or "uniform"
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0
    buffer_size: int = 1000  # uniform: shuffle buffer, in samples
    block: int = 1  # uniform: samples per range read (1: an exact global shuffle; see epoch_order)
    decode: str = "workers"  # "device": workers plan each crop, the batch is decoded on the device; "hybrid": both
    attributes: int = 0  # > 0: labels are rows [class, 0/1 or MISSING per attribute] (the `attr` member)

    def __post_init__(self):
        if self.mode not in ("uniform", "class-aware"):
            raise ValueError(f"mode must be uniform or class-aware, got {self.mode!r}")
        if self.block < 1 or self.buffer_size < 1:
            raise ValueError(f"block and buffer_size must be >= 1, got {self.block} and {self.buffer_size}")
        if self.decode not in ("workers", "device", "hybrid"):
            raise ValueError(f"decode must be workers, device or hybrid, got {self.decode!r}")


class _RankBatches(IterableDataset):
    def __init__(self, cfg: LoaderConfig, transform: TrainTransform, rank: int, world_size: int, epoch: int,
                 states: dict[int, dict], rotation: int, channels_last: bool, start: int = 0,
                 share: DecodeShare | None = None):
        self.cfg, self.transform, self.rank, self.world_size, self.epoch = cfg, transform, rank, world_size, epoch
        self.states, self.rotation, self.channels_last, self.start = states, rotation, channels_last, start
        self.share = share

    def _planned(self) -> int:
        """How many of the next batch's samples the device decodes: the last ones."""
        if self.cfg.decode == "hybrid":
            return self.share.planned(self.cfg.batch_size)
        return self.cfg.batch_size if self.cfg.decode == "device" else 0

    def __iter__(self):
        info = get_worker_info()
        workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.rotation) % workers
        catalog = Catalog.load(self.cfg.shards)
        state = self.states.get(worker)
        if self.cfg.mode == "uniform":
            stream = UniformStream(catalog, self.cfg.seed, self.epoch, self.rank, self.world_size, worker, workers,
                                   self.cfg.buffer_size, self.cfg.block, state=state)
        else:
            stream = ClassAwareStream(catalog, self.cfg.seed, self.rank, self.world_size, worker, workers,
                                      self.cfg.batch_size, start=self.start, state=state)
        bad = (state or {}).get("bad_samples", 0)
        multi_hot = catalog.num_classes if catalog.multi_label else 0
        part = BatchParts(self.cfg.batch_size, self._planned())
        for draw in stream:
            rng = random.Random(stable_hash(self.cfg.seed, "augment", self.epoch, self.rank, worker, stream.yielded))
            # (class-aware loaders are built with epoch 0 and number their draws across epochs)
            try:
                label = target(draw, self.cfg.attributes, multi_hot)
                # a plan: the crop, flip and PCA alphas the device decodes with, drawn here where randomness
                # is tracked; None (not a JPEG, or a part the workers decode): decoded here
                plan = self.transform.plan(draw.members["jpg"], rng) if part.devices_turn else None
                if plan is None:  # an image's crop, or a video's clip (`clips.ClipTransform`); its PCA alphas
                    image, extra = self.transform.sample(draw.members, rng)
            except Exception as exc:  # a corrupt sample: skipped, counted, reported once per worker
                if not bad:
                    log.warning("skipping undecodable sample %s in %s: %s", draw.key, draw.url, exc)
                bad += 1
                continue
            if plan is None:
                part.add_decoded(image, extra, label)
            else:
                part.add_planned(draw.members["jpg"], plan, label, f"{draw.key} in {draw.url}")
            if part.size == part.batch_size:
                yield self._batch(part, worker, stream, bad)
                part = BatchParts(self.cfg.batch_size, self._planned())
        if part.size:
            yield self._batch(part, worker, stream, bad)

    def _batch(self, part: BatchParts, worker, stream, bad) -> RankBatch:
        meta = {"worker": worker, "state": {**stream.state_dict(), "bad_samples": bad},
                "skipped": stream.skipped + bad}
        return part.ship(meta, self.channels_last)


class _EvalSamples(IterableDataset):
    """This rank's exact share of a split, in stored order, divided between the DataLoader workers."""

    def __init__(self, shards: str, transform: EvalTransform | ClipTransform, rank: int, world_size: int,
                 attributes: int):
        self.shards, self.transform, self.rank, self.world_size = shards, transform, rank, world_size
        self.attributes = attributes

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        catalog = Catalog.load(self.shards)
        multi_hot = catalog.num_classes if catalog.multi_label else 0
        for draw in SequentialStream(catalog, self.rank, self.world_size, worker, workers):
            yield self.transform.sample_views(draw.members), target(draw, self.attributes, multi_hot)


def target(draw, attributes: int, multi_hot: int = 0) -> int | list[int]:
    """A sample's label: its class; with `attributes` [class, its `attr` bits (MISSING without)]; in a
    multi-label split (`multi_hot`: its class count) [class, 0/1 per class: its `labels` member's]."""
    if attributes:
        return [draw.cls, *decode_attributes(draw.members.get("attr"), attributes).tolist()]
    if multi_hot:
        row = [0] * multi_hot
        for c in decode_labels(draw.members.get("labels"), draw.cls):
            row[c] = 1
        return [draw.cls, *row]
    return draw.cls


def eval_batches(shards: str, transform: EvalTransform | ClipTransform, rank: int = 0, world_size: int = 1, batch_size: int = 64,
                 num_workers: int = 1, attributes: int = 0) -> DataLoader:
    """(views, labels) batches of this rank's exact share of a split (no padding, no duplicates; the
    ranks together cover it once), decoded by `num_workers` processes: uint8 (batch x V, C, H, W), the
    V views of each image in turn (`transform.normalizer()` finishes them on the device); of videos
    (a `ClipTransform`), (batch x V, C, T, H, W) clip views.  Labels as `target` gives them."""
    return DataLoader(_EvalSamples(shards, transform, rank, world_size, attributes), batch_size=batch_size,
                      num_workers=num_workers, collate_fn=_stack_views, generator=_own_generator())


def _stack_views(samples):
    return torch.cat([views for views, _ in samples]), torch.tensor([cls for _, cls in samples])


def _own_generator() -> torch.Generator:
    """DataLoader draws its workers' base seed from this generator, not the global one: creating an
    iterator must not shift the training's dropout draws (a resumed run creates its iterator at another
    point than an uninterrupted one).  Nothing here uses torch's worker seeds: randomness is derived
    per sample from (seed, rank, worker, draw)."""
    return torch.Generator().manual_seed(0)


def _as_is(batch):
    """Batches are made in the workers; DataLoader's default would walk every stream-state field."""
    return batch


class ShardLoader:
    """`transform.sample(members, rng) -> (uint8 CHW, PCA alphas)` runs in the workers (a `TrainTransform`;
    a `ClipTransform` gives video shards' uint8 (3, T, S, S) clips);
    its `batch_normalizer()` finishes each batch on `device` (float, colour noise, mean/std).
    With `decode="device"` the workers only read and plan each crop (`TrainTransform.plan`), and each
    batch is decoded on `device` (nvJPEG on CUDA) with the same crops; `decode="hybrid"` splits each
    batch between the two (`device_decode`).  Batches come channels-last with `channels_last` (for a
    channels-last model), else NCHW-contiguous."""

    def __init__(self, cfg: LoaderConfig, transform: TrainTransform | ClipTransform, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", channels_last: bool = False):
        self.cfg, self.transform, self.rank, self.world_size = cfg, transform, rank, world_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.normalize = transform.batch_normalizer()
        self.catalog = Catalog.load(cfg.shards)
        self.workers = max(1, cfg.num_workers)
        self._states: dict[int, dict] = {}  # per worker, as consumed
        self._skipped: dict[int, int] = {}
        self._next_worker = 0
        self._in_epoch = 0  # batches of the current epoch already consumed
        self._epoch: int | None = None  # the epoch a restored state belongs to, until epoch() runs
        self._iterator: Iterator | None = None  # class-aware: one endless DataLoader across epochs
        self._start = 0  # class-aware: where the job's sequence continues after a change of world or workers
        self._skipped_earlier = 0  # skips no worker state holds: earlier uniform epochs', the device's
        self.share = DecodeShare(start=0.0) if cfg.decode == "hybrid" else None
        # the device's decoding runs one batch ahead, on a side stream on CUDA (`device_decode`)
        self._ahead = 0 if cfg.decode == "workers" else 1
        self._stream = torch.cuda.Stream(self.device) if self._ahead and self.device.type == "cuda" else None

    @property
    def samples_per_epoch(self) -> int:
        """This rank's samples per epoch: its exact uniform share (class-aware epochs are that long too)."""
        return UniformStream.rank_length(self.catalog, self.rank, self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Uniform: this rank's batches.  Class-aware: the same on every rank (DDP steps in lockstep)."""
        if self.cfg.mode == "class-aware":
            return class_aware_epoch_steps(self.catalog, self.world_size, self.cfg.batch_size)
        return self._uniform_steps(self.rank)

    @property
    def common_steps(self) -> int:
        """Steps every rank takes this epoch (uniform ranks may differ by a batch at the end)."""
        if self.cfg.mode == "class-aware":
            return self.steps_per_epoch
        return min(self._uniform_steps(r) for r in range(self.world_size))

    def _uniform_steps(self, rank: int) -> int:
        n = UniformStream.rank_length(self.catalog, rank, self.world_size)
        return sum(math.ceil((b - a) / self.cfg.batch_size)
                   for a, b in (split_range(n, self.workers, w) for w in range(self.workers)))

    @property
    def skipped(self) -> int:
        """Samples skipped so far (unreadable shards, undecodable images), over all workers."""
        return sum(self._skipped.values()) + self._skipped_earlier

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of `epoch`; after `load_state_dict`, the rest of the saved epoch."""
        resuming = self._epoch == epoch
        if self.cfg.mode == "uniform":
            if not resuming:  # new streams, counting their skips from 0
                self._skipped_earlier += sum(self._skipped.values())
                self._states, self._skipped, self._next_worker, self._in_epoch = {}, {}, 0, 0
            iterator = iter(self._data_loader(epoch))
        else:
            if not resuming:
                self._in_epoch = 0
            if self._iterator is None:
                self._iterator = iter(self._data_loader(0))
            iterator = self._iterator
        self._epoch = epoch
        fetched, exhausted, ready = self._in_epoch, False, deque()
        while True:
            if not exhausted and fetched < self.steps_per_epoch and len(ready) <= self._ahead:
                t = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    exhausted = True
                    continue
                if self.share is not None:
                    self.share.update(time.perf_counter() - t)
                fetched += 1
                with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
                    on_device = self._on_device(batch)
                    done = self._stream.record_event() if self._stream is not None else None
                ready.append((on_device, batch.meta, done))
                continue
            if not ready:
                break
            (images, labels, left_out), meta, done = ready.popleft()
            self._states[meta["worker"]] = meta["state"]
            self._skipped[meta["worker"]] = meta["skipped"]
            self._next_worker = (meta["worker"] + 1) % self.workers
            self._in_epoch += 1
            self._skipped_earlier += left_out
            if done is not None:  # the step waits for this batch (not the next), which is then its own
                step_stream = torch.cuda.current_stream(self.device)
                step_stream.wait_event(done)
                images.record_stream(step_stream)
                labels.record_stream(step_stream)
            yield images, labels
        self._epoch = None
        self._in_epoch = 0

    def _on_device(self, batch: RankBatch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(normalised images, labels, samples left out) on the training device."""
        if not batch.jpegs:
            non_blocking = self.device.type == "cuda"
            return (self.normalize(batch.images.to(self.device, non_blocking=non_blocking), batch.alphas),
                    batch.labels.to(self.device, non_blocking=non_blocking), 0)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return assemble(batch, self.device, self.transform.size, self.normalize, layout)

    def _data_loader(self, epoch: int) -> DataLoader:
        dataset = _RankBatches(self.cfg, self.transform, self.rank, self.world_size, epoch, dict(self._states),
                               self._next_worker, self.channels_last, self._start, self.share)
        return DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=self.cfg.num_workers,
                          generator=_own_generator(),
                          persistent_workers=False, prefetch_factor=2 if self.cfg.num_workers else None,
                          pin_memory=self.device.type == "cuda")  # so non_blocking copies overlap

    def state_dict(self) -> dict:
        """Where this rank's input is, as consumed: JSON, for the training checkpoint."""
        return {"mode": self.cfg.mode, "workers": self.workers, "batch": self.cfg.batch_size, "start": self._start,
                "epoch": self._epoch, "in_epoch": self._in_epoch,
                "next_worker": self._next_worker, "states": {str(k): v for k, v in self._states.items()},
                "skipped": {str(k): v for k, v in self._skipped.items()}, "skipped_earlier": self._skipped_earlier}

    def restore(self, states: list[dict]) -> str:
        """Continue from every rank's saved state (a checkpoint's `streams`).  Same world size and
        workers: each stream exactly where it was.  Otherwise class-aware streams continue the job's one
        sequence from the first draw that not every old stream had taken (nothing skipped; the few draws
        some had taken beyond it, about a batch per old stream, are drawn again), and uniform epochs
        start afresh (as they do after `data.ingest: ray_data`).  Returns which of these happened."""
        if any(s.get("ingest") == "ray_data" for s in states):
            return "restarted"
        if len(states) == self.world_size and states[self.rank]["workers"] == self.workers:
            self.load_state_dict(states[self.rank])
            return "exact"
        if self.cfg.mode == "class-aware" and all(s["mode"] == "class-aware" for s in states):
            self._start = min(next_job_draws(states))
            self._states, self._skipped, self._next_worker, self._in_epoch = {}, {}, 0, 0
            self._epoch, self._iterator = None, None
            return f"continued from draw {self._start}"
        return "restarted"

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.cfg.mode or state["workers"] != self.workers:
            raise ValueError(f"stream state is for {state['mode']} with {state['workers']} workers; this loader "
                             f"is {self.cfg.mode} with {self.workers}")
        self._states = {int(k): v for k, v in state["states"].items()}
        self._skipped = {int(k): v for k, v in state["skipped"].items()}
        self._next_worker, self._in_epoch, self._epoch = state["next_worker"], state["in_epoch"], state["epoch"]
        self._start = state.get("start", 0)
        self._skipped_earlier = state.get("skipped_earlier", 0)
        self._iterator = None


def next_job_draws(states: list[dict]) -> list[int]:
    """The next draw of the job's class-aware sequence of every stream of every rank, from the ranks'
    loader states (a worker that had not delivered a batch yet is still at its first draw)."""
    world = len(states)
    draws = []
    for rank, state in enumerate(states):
        for worker in range(state["workers"]):
            s = state["states"].get(str(worker))  # JSON keys, as state_dict() writes them
            draws.append(job_draw(s["taken"], s["stream"], s["streams"], s["batch"], s["start"]) if s else
                         job_draw(0, stream_index(rank, world, worker), world * state["workers"], state["batch"],
                                  state["start"]))
    return draws

