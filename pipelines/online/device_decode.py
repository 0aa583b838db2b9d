"""Decoding training images on the training device (`data.decode: device | hybrid`), and the hybrid's split.

With `decode: device` the loader's workers only read each sample and draw its crop (`TrainTransform.plan`:
the box, flip and colour noise `__call__` would draw, from the JPEG header alone); the training process
decodes the batch on the device (nvJPEG on CUDA, libjpeg-turbo on the CPU), crops each box, resizes it
(bilinear, antialiased), flips it, and normalises the batch.  It is the same augmentation as the workers',
so a batch may mix the two: with `decode: hybrid` the workers decode the first part of each batch and
plan the rest, and `DecodeShare` steers the planned fraction from whether training had to wait for its
batch: the CPUs decode as many as they can, the device the rest.  On CUDA the device's part runs on a
side stream, one batch ahead, so that it overlaps the training step instead of queueing behind it.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from pipelines.online.transforms import decode_uint8

log = logging.getLogger(__name__)

PLAN_FIELDS = 5  # x0, y0, x1, y1, flip; then the PCA alphas


class RankBatch(NamedTuple):
    """What a loader worker ships: the first samples decoded (uint8, their PCA alphas), the rest as JPEG
    bytes with their plans; labels for all, in that order; and the worker's stream state."""

    images: torch.Tensor | None  # uint8 (m, C, H, W) or clips; None when the device decodes them all
    alphas: torch.Tensor  # (m, PCA alphas per image: 3 or 0)
    labels: torch.Tensor
    meta: dict
    jpegs: list[bytes]  # the k planned samples
    plans: torch.Tensor  # (k, PLAN_FIELDS + alphas)
    keys: list[str]  # the planned samples' names, for the warning when one does not decode


class BatchParts:
    """A batch a loader worker is filling: its decoded samples first, then the `planned` last ones."""

    def __init__(self, batch_size: int, planned: int):
        self.batch_size, self.planned = batch_size, planned
        self.images, self.extras, self.labels = [], [], []
        self.jpegs, self.plans, self.planned_labels, self.keys = [], [], [], []

    @property
    def size(self) -> int:
        return len(self.labels) + len(self.planned_labels)

    @property
    def devices_turn(self) -> bool:
        """Whether the next sample is one the device decodes."""
        return self.size >= self.batch_size - self.planned

    def add_decoded(self, image: torch.Tensor, extra: list[float], label) -> None:
        self.images.append(image)
        self.extras.append(extra)
        self.labels.append(label)

    def add_planned(self, jpeg: bytes, plan: list[float], label, key: str) -> None:
        self.jpegs.append(jpeg)
        self.plans.append(plan)
        self.planned_labels.append(label)
        self.keys.append(key)

    def ship(self, meta: dict, channels_last: bool) -> RankBatch:
        # default_collate stacks straight into shared memory, so the batch is not copied again to reach
        # the training process.  Crops are HWC in memory (as decoded), so stacking them channels-last is a
        # plain copy.
        images = None
        if self.images:
            images = (default_collate([image.permute(1, 2, 0) for image in self.images]).permute(0, 3, 1, 2)
                      if channels_last and self.images[0].dim() == 3 else default_collate(self.images))
        width = len(self.extras[0]) if self.extras else len(self.plans[0]) - PLAN_FIELDS  # PCA alphas or none
        alphas = torch.tensor(self.extras, dtype=torch.float32).reshape(len(self.extras), width)
        plans = torch.tensor(self.plans, dtype=torch.float32).reshape(len(self.plans), PLAN_FIELDS + width)
        return RankBatch(images, alphas, torch.tensor(self.labels + self.planned_labels), meta, self.jpegs, plans,
                         self.keys)


class DecodeShare:
    """The fraction of each batch `decode: hybrid` leaves to the device, shared with the loader's
    worker processes (they read it when they start a batch).  It rises while training waits for batches
    (the CPUs cannot keep up) and falls slowly while batches are ready (the device's time goes back to
    the step), so it settles where the CPUs decode as many as they can."""

    WAIT_S = 1e-3  # a wait shorter than this is the queue's handoff, not a starved step
    RISE, FALL = 1 / 16, 1 / 64

    def __init__(self, start: float = 0.0):
        self._value = multiprocessing.RawValue("d", start)

    @property
    def value(self) -> float:
        return self._value.value

    def planned(self, batch_size: int) -> int:
        """How many of a batch's samples to leave to the device."""
        return round(self.value * batch_size)

    def update(self, waited_s: float) -> None:
        step = self.RISE if waited_s > self.WAIT_S else -self.FALL
        self._value.value = min(1.0, max(0.0, self.value + step))


def decode_planned(jpegs: list[bytes], plans: torch.Tensor, out: torch.Tensor) -> list[int]:
    """Decode `jpegs` on `out`'s device and write each plan's crop, resized to `out`'s size and flipped,
    into `out` (float, 0-255; the caller normalises).  Returns the indices that did not decode.

    The batch goes to nvJPEG in one call; if that call fails (a CMYK or arithmetic-coded JPEG, a
    damaged one), each image is decoded alone, the odd ones on the CPU, and those that decode nowhere
    are left out."""
    device, size = out.device, out.shape[-2:]
    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    if device.type == "cuda":
        # torchvision's decoder allocates its outputs on this stream but writes them from a stream of its
        # own without waiting for this one: a block freed here with reads still queued could be overwritten
        # early (pytorch/vision#9606).  Nothing may stay queued here, then.
        torch.cuda.current_stream(device).synchronize()
    try:
        images = decode_jpeg(data, device=device, mode=ImageReadMode.RGB)
    except RuntimeError:
        images = [_decode_one(d, j, device) for d, j in zip(data, jpegs)]
    failed = []
    for i, (image, plan) in enumerate(zip(images, plans.tolist())):
        if image is None:
            failed.append(i)
            continue
        x0, y0, x1, y1 = (int(v) for v in plan[:4])
        region = image[None, :, y0:y1, x0:x1].float()
        if region.shape[-2:] != size:
            region = F.interpolate(region, size=tuple(size), mode="bilinear", antialias=True)
        out[i] = region[0].flip(-1) if plan[4] else region[0]
    return failed


def _decode_one(data: torch.Tensor, jpeg: bytes, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, device=device, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    try:  # what the device's decoder will not take, the CPU's may (decode_uint8 falls back to Pillow)
        return decode_uint8(jpeg).to(device)
    except Exception:
        return None


def assemble(batch: RankBatch, device: torch.device, size: int, normalize, memory_format) -> tuple[
        torch.Tensor, torch.Tensor, int]:
    """One normalised float batch on `device` from a mixed `RankBatch`: the decoded part copied in, the
    planned part decoded there.  Returns (images, labels, samples left out because they did not decode)."""
    decoded = 0 if batch.images is None else len(batch.images)
    n = decoded + len(batch.jpegs)
    non_blocking = device.type == "cuda"
    out = torch.empty(n, 3, size, size, dtype=torch.float32, device=device, memory_format=memory_format)
    if decoded:
        out[:decoded].copy_(batch.images.to(device, non_blocking=non_blocking))
    failed = decode_planned(batch.jpegs, batch.plans, out[decoded:]) if batch.jpegs else []
    alphas = torch.cat([batch.alphas, batch.plans[:, PLAN_FIELDS:]]).to(device, non_blocking=non_blocking)
    labels = batch.labels.to(device, non_blocking=non_blocking)
    if failed:
        log.warning("left out %d sample(s) that do not decode, e.g. %s", len(failed), batch.keys[failed[0]])
        keep = torch.tensor(sorted(set(range(n)) - {decoded + i for i in failed}), device=device)
        out, alphas, labels = out[keep].contiguous(memory_format=memory_format), alphas[keep], labels[keep]
    return normalize(out, alphas), labels, len(failed)
