"""What one rank has accumulated in the current epoch: running loss sums (kept on the device, so the
step loop never waits for the GPU), the input checksum, sample and step counts, time.  A mid-epoch
checkpoint carries every rank's tally, so the epoch resumed from it reports what an uninterrupted
epoch reports."""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class EpochTally:
    def __init__(self, device, rank: int, skipped_before: int):
        self.device, self.rank = device, rank
        self.sums: dict[str, torch.Tensor] = defaultdict(self._zero)
        self.digest = self._zero()
        self.seen = self.done = 0
        self.waited = 0.0
        self.started = time.perf_counter()
        self.skipped_before = skipped_before  # the loader's skipped count when the epoch began

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, losses: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        for k, v in losses.items():
            if k.startswith("loss"):
                self.sums[k] += v.detach().double() * len(y)
        # which labels, in which order: two runs that consumed the same input have the same digest
        labels = y if y.dim() == 1 else y[:, 0]  # (with attributes, rows [class, attribute bits...])
        positions = torch.arange(self.seen + 1, self.seen + len(y) + 1, dtype=torch.float64, device=self.device)
        self.digest = torch.fmod(self.digest + (positions * (labels.double() + 1)).sum() * (self.rank + 1), 1e12)
        self.seen += len(y)
        self.done += 1

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def to_json(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "digest": float(self.digest), "seen": self.seen,
                "done": self.done, "waited": self.waited, "elapsed": self.elapsed,
                "skipped_before": self.skipped_before}

    @classmethod
    def resume(cls, saved: dict, device, rank: int) -> "EpochTally":
        """This rank's tally as a mid-epoch checkpoint saved it (`to_json()`)."""
        tally = cls(device, rank, saved["skipped_before"])
        for k, v in saved["sums"].items():
            tally.sums[k] += v
        tally.digest += saved["digest"]
        tally.seen, tally.done, tally.waited = saved["seen"], saved["done"], saved["waited"]
        tally.started -= saved["elapsed"]
        return tally
