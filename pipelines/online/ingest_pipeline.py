"""Training input as a Ray Data pipeline (`data.ingest: ray_data`): shards are sampled, read, decoded and
augmented by Ray tasks anywhere in the cluster (data nodes included), and every Train worker takes ready
uint8 batches from `ray.train.get_dataset_shard("train").iter_torch_batches(...)`.

One epoch:
- the training loop's rank 0 posts the epoch's plan to an actor (`EpochPlan`): which epoch, and which
  of its positions are still to train (all of them; after a mid-epoch resume, those no rank had consumed);
- Ray Train's split coordinator executes the dataset once per epoch, and `EpochSource.get_read_tasks`
  reads the plan there, packing the remaining positions into tasks of the plan's chunk (`read_ranges`);
- a task maps each position to a sample (uniform: the epoch's global shuffle, `epoch_order`; class-aware:
  draw d of the job's one WM sequence, `wm_sequence`), fetches it with one range read, decodes and
  augments it with randomness drawn from (seed, epoch, position) (so a retried task yields the same
  rows), and returns uint8 crops (of a video: its clip, `clips.ClipTransform`) with labels and
  positions.  A sample that cannot be read or decoded stays in the block with `ok` false: it is
  counted as skipped, never silently lost;
- `streaming_split` gives each block to the rank that has received the fewest rows so far.

What is exact: every epoch trains each of its positions once across the ranks (uniform: every sample of
the split once; class-aware: the job's WM draws [e*N, (e+1)*N), N = steps x batch x ranks), through a
killed data task (Ray retries it: same rows) and through a mid-epoch checkpoint (the consumed positions
are saved; the resumed epoch trains the rest).  What is not: which rank trains which sample, and the
batches' composition after a resume, depend on timing; `data.ingest: loader` is exact to the batch.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
from ray.data import DataContext, Datasource, ExecutionOptions, ReadTask
from ray.data.block import BlockMetadata
from ray.train import DataConfig

from common.console import quiet_console_handlers
from common.hashing import stable_hash
from pipelines.offline.attributes import decode as decode_attributes
from pipelines.online.catalog import READ_ERRORS, Catalog, RangeReader
from pipelines.online.class_offsets import ClassOffsets
from pipelines.online.clips import ClipTransform
from pipelines.online.epoch_order import EpochOrder
from pipelines.online.tar_stream import parse_sample
from pipelines.online.transforms import TrainTransform
from pipelines.online.wm_sequence import WMSequence

log = logging.getLogger(__name__)

DATASET = "train"  # the name Train workers ask `get_dataset_shard` for


@dataclass(frozen=True)
class IngestSpec:
    """What a data task needs to turn positions into training rows (hashable: the per-process caches' key)."""

    shards: str
    mode: str  # uniform | class-aware
    seed: int
    transform: TrainTransform | ClipTransform  # an image's crop, or a video's clip
    attributes: int = 0
    block: int = 1  # uniform: samples per block of the epoch order (see epoch_order)
    chunk: int = 128  # positions per data task (at most: small epochs get smaller ones)


@ray.remote(num_cpus=0)
class EpochPlan:
    """The epoch the pipeline serves, and its positions still to train: posted by rank 0 before each
    epoch, read by the split coordinator when the epoch's execution starts."""

    def __init__(self):
        self.plan = None

    def post(self, plan: dict) -> None:
        self.plan = plan

    def get(self) -> dict | None:
        return self.plan


class EpochSource(Datasource):
    """Read tasks over the positions the posted plan still lists ([[lo, hi), ...] intervals), `chunk`
    positions each (`read_ranges`)."""

    def __init__(self, plan, verbose: bool = False):
        super().__init__()
        self.plan, self.verbose = plan, verbose

    def __setstate__(self, state: dict) -> None:
        """Unpickled in Ray Train's split coordinator, before it runs anything: there, Ray Data's INFO
        lines go to its log only (it logs one per epoch), unless --verbose."""
        self.__dict__.update(state)
        if not self.verbose:
            quiet_console_handlers("ray.data")

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        plan = ray.get(self.plan.get.remote())
        if plan is None:  # (asked before the first epoch is posted: no rows yet)
            return []
        tasks = []
        for ranges in read_ranges(plan["todo"], plan["chunk"]):
            rows = sum(hi - lo for lo, hi in ranges)
            tasks.append(ReadTask(functools.partial(_positions, plan["epoch"], ranges),
                                  BlockMetadata(num_rows=rows, size_bytes=16 * rows, exec_stats=None,
                                                input_files=None)))
        return tasks


def read_ranges(todo: list, chunk: int) -> list[list[tuple[int, int]]]:
    """The [lo, hi) intervals `todo`, in order, packed into tasks of `chunk` positions (the last one fewer).

    Packed, not one task per interval: after a mid-epoch resume of a shuffled uniform epoch, the positions
    left are mostly runs of one or two (what each rank's shuffle buffer held), so cutting each interval on
    its own would more than double the epoch's tasks at Places365-Challenge size (tests/test_ray_ingest.py)."""
    tasks, ranges, room = [], [], chunk
    for lo, hi in todo:
        while lo < hi:
            take = min(room, hi - lo)
            ranges.append((lo, lo + take))
            lo, room = lo + take, room - take
            if not room:
                tasks.append(ranges)
                ranges, room = [], chunk
    return tasks + [ranges] if ranges else tasks


def _positions(epoch: int, ranges: list[tuple[int, int]]):
    positions = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in ranges])
    yield pa.table({"epoch": np.full(len(positions), epoch, np.int64), "position": positions})


@functools.lru_cache(maxsize=4)
def _corpus(shards: str, mode: str, seed: int):
    """(catalog, offsets, WM sequence or None), once per process: the class index is the costly part."""
    catalog = Catalog.load(shards)
    offsets = ClassOffsets(catalog)
    return catalog, offsets, WMSequence(offsets.counts, seed) if mode == "class-aware" else None


@functools.lru_cache(maxsize=2)
def _epoch_order(rows: int, block: int, seed: int, epoch: int) -> EpochOrder:
    return EpochOrder(rows, block, seed, epoch)


@functools.lru_cache(maxsize=4)
def _reader(shards: str, mode: str, seed: int) -> RangeReader:
    """One reader per process and corpus: its open files are reused by the process's next tasks."""
    return RangeReader(_corpus(shards, mode, seed)[0].loc)


def decode_rows(batch: dict[str, np.ndarray], spec: IngestSpec) -> dict[str, np.ndarray]:
    """Positions of an epoch -> uint8 HWC crops (a batch of them permutes to channels-last NCHW for free)
    or (3, T, S, S) clips, PCA alphas, labels, positions and an `ok` flag."""
    catalog, offsets, sequence = _corpus(spec.shards, spec.mode, spec.seed)
    reader = _reader(spec.shards, spec.mode, spec.seed)
    t, n = spec.transform, len(batch["position"])
    clips = isinstance(t, ClipTransform)
    images = np.zeros((n, 3, len(t.offsets), t.size, t.size) if clips else (n, t.size, t.size, 3), np.uint8)
    extras = np.zeros((n, 3), np.float32)
    labels = np.zeros((n, 1 + spec.attributes) if spec.attributes else (n,), np.int64)
    ok = np.zeros(n, bool)
    for j, (epoch, position) in enumerate(zip(batch["epoch"].tolist(), batch["position"].tolist())):
        if sequence is not None:
            row = offsets.locate(*sequence.draw(position))
        else:
            row = offsets.row(_epoch_order(offsets.rows, spec.block, spec.seed, epoch).row(position))
        rng = random.Random(stable_hash(spec.seed, "augment", epoch, position))
        try:
            if not row.size:
                raise EOFError(f"{row.url}: a sample that could not be indexed")
            members = parse_sample(reader.read(row.url, row.offset, row.size), row.url, row.offset).members
            image, extra = t.sample(members, rng)
            attrs = decode_attributes(members.get("attr"), spec.attributes).tolist() if spec.attributes else []
        except (*READ_ERRORS, KeyError) as exc:
            log.warning("skipping unreadable sample at %s:%d: %s: %s", catalog.loc.uri(row.url), row.offset,
                        type(exc).__name__, exc)
            continue
        except Exception as exc:  # an undecodable image: skipped and counted like an unreadable one
            log.warning("skipping undecodable sample at %s:%d: %s", catalog.loc.uri(row.url), row.offset, exc)
            continue
        images[j] = image.numpy() if clips else image.permute(1, 2, 0).numpy()
        extras[j, :len(extra)] = extra
        labels[j] = [row.cls, *attrs] if spec.attributes else row.cls
        ok[j] = True
    return {"image": images, "extra": extras, "label": labels, "position": batch["position"], "ok": ok}


def build_dataset(spec: IngestSpec, plan, cpus: float = 1.0, resources: dict | None = None,
                  verbose: bool = False):
    """The training dataset: positions of the posted plan -> decoded rows, in tasks of `cpus` CPUs (and
    `resources`, e.g. {"ingest_cpu": 1}: how an operator caps what GPU nodes give to decoding)."""
    args = {"num_cpus": cpus, **({"resources": resources} if resources else {})}
    ds = ray.data.read_datasource(EpochSource(plan, verbose), **args)
    ds = ds.map_batches(decode_rows, fn_kwargs={"spec": spec}, batch_size=None, batch_format="numpy", **args)
    # rank 0's progress line is the console's; Ray Data's bars and execution lines with --verbose
    ds.context.enable_progress_bars = ds.context.print_on_execution_start = verbose
    return ds


class EpochSplit(DataConfig):
    """Ray Train's split of the training dataset between its workers, with the row count per worker left
    free (`equal=False`) where every row must be trained: the default truncates to equal shares."""

    def __init__(self, equal: bool):
        super().__init__()
        self.equal = equal

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        ds = datasets[DATASET]
        # default_ingest_options() as Ray Train's, less the deprecated exclude_resources (a warning per run)
        current = DataContext.get_current().execution_options
        ds.context.execution_options = ExecutionOptions(resource_limits=current.resource_limits,
                                                        preserve_order=current.preserve_order,
                                                        verbose_progress=current.verbose_progress)
        splits = ds.streaming_split(world_size, equal=self.equal, locality_hints=worker_node_ids)
        return [{DATASET: split} for split in splits]
