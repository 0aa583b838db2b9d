"""The console's one line when Train workers fail and Ray Train restarts the worker group:

    Train worker rank 1 failed (Ray's logs say why); the worker group restarted from checkpoint NAME (epoch 2, its end), with the same input stream

Which ranks failed is known only to Ray Train's controller (`ReportFailedRanks`, a Train callback that
runs there); where the new group continues only to its rank 0, which restored the checkpoint
(`train_loop.restore_line`).  Both reach the driver's `ConsoleRelay`, whose composer (`RestartLines`)
joins them into one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ray.train import UserCallback

RESTARTED = "the worker group restarted from "  # how rank 0's line after a restore within the same fit() starts
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerFailure:
    """What the controller tells the console: the world ranks whose training function failed."""
    ranks: tuple[int, ...]

    def text(self) -> str:
        which = f"rank {self.ranks[0]}" if len(self.ranks) == 1 else f"ranks {', '.join(map(str, self.ranks))}"
        return f"Train worker {which} failed (Ray's logs say why)"


class ReportFailedRanks(UserCallback):
    """On Ray Train's controller: puts a WorkerFailure into the console relay's queue."""

    def __init__(self, console):
        self.console = console

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        try:
            self.console.put(WorkerFailure(tuple(sorted(worker_exceptions))), timeout=10)
        except Exception as exc:  # lines are not results: a lost relay must not change how the run fails
            log.warning("console relay unavailable: %r", exc)


class RestartLines:
    """ConsoleRelay's composer: a WorkerFailure is held and joined with the new rank 0's restore line; a
    group restarted before any checkpoint sends none, so the next line then follows a line of its own,
    and a failure after which no group restarts (its retries spent) is printed alone at the end, before
    the driver's own failure line."""

    def __init__(self):
        self.failed: WorkerFailure | None = None

    def feed(self, item) -> list[str]:
        if isinstance(item, WorkerFailure):
            self.failed = item
            return []
        failed, self.failed = self.failed, None
        if failed is None:
            return [item]
        if item.startswith(RESTARTED):
            return [f"{failed.text()}; {item}"]
        return [f"{failed.text()}; {RESTARTED}the start (no checkpoint yet), with the same input stream", item]

    def end(self) -> list[str]:
        return [self.failed.text()] if self.failed else []
