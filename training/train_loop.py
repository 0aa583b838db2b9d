"""`train_fn_per_worker`: what every Ray Train worker runs, a `TrainLoopRunner` built from the run's
config.  Data and model come from factories; a step calls `model(x, y)` for a dict of losses, so the loop
never branches on architecture or relay mode."""

from __future__ import annotations

from contextlib import nullcontext
import os
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from common.console import quiet_console_handlers
from training import stopped_run
from training.attribute_metrics import attribute_report
from training.checkpoint import contents
from training.checkpoint.reporting import MidEpochPolicy, mid_epoch_metrics, report_checkpoint
from training.config import from_dict
from training.distributed import gather, rng_state, set_rng_state
from training.epoch_tally import EpochTally
from training.metrics_sink import MetricsSink
from training.models import build_model, clip_offsets_for
from training.models.freezing import train_mode
from training.optim import make_ema, make_optimizer, make_scheduler
from training.pretrained import warm_start
from training.train_input import build_train_loader, clip_transform
from training.validation import autocast, evaluate_rank
from training.worker_failures import RESTARTED


def train_fn_per_worker(config: dict) -> None:
    if not config.get("verbose"):
        # Ray Train sends this worker's root logger (its per-report "Reporting training result" lines
        # included) to the console; the console keeps warnings, Train's worker log file keeps everything
        quiet_console_handlers()
    if config.get("shared_marker"):  # a node the autoscaler added after the driver checked the shared filesystem
        config["shared_marker"].check("config key 'run.storage_path'")
    TrainLoopRunner(config).run()


class TrainLoopRunner:
    """One worker's share of a run: its model (DDP-wrapped), optimiser, schedule, input stream and, on
    rank 0, the console and metrics sink.  `run` restores the latest checkpoint, then for each epoch
    trains (checkpointing inside it when due), validates and saves."""

    def __init__(self, config: dict):
        self.config, self.cfg = config, from_dict(config["train"])
        cfg = self.cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = device = ray.train.torch.get_device()
        self.gpu = device.type == "cuda"
        torch.backends.cudnn.benchmark = self.gpu and cfg.run.cudnn_benchmark
        torch.manual_seed(cfg.run.seed)
        self.checkpoint = ray.train.get_checkpoint()
        model = build_model(cfg)
        if self.checkpoint is None:
            warm_start(model, cfg)
        self.clips = clip_transform(cfg, clip_offsets_for(cfg))
        if self.gpu and cfg.run.channels_last and self.clips is None:  # (Conv3d's would be channels_last_3d)
            model = model.to(memory_format=torch.channels_last)
        self.ddp = ray.train.torch.prepare_model(model)  # DDP on several workers; the model itself on one
        self.net = model  # the un-wrapped model: eval, checkpoints
        self.loader = build_train_loader(cfg, self.rank, self.world, device, config.get("ingest_plan"), self.clips)
        self.optimizer = make_optimizer(model, cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, self.loader.steps_per_epoch, cfg.run.epochs)
        self.ema = make_ema(model, cfg.optim.ema_decay)  # every rank keeps one: DDP keeps their weights equal
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.gpu and cfg.run.amp
                                           and cfg.run.amp_dtype == "float16")
        self.step_fn = torch.compile(self.ddp) if cfg.run.compile else self.ddp
        self.start_epoch, self.step, self.history, self.resumed = 0, 0, [], None
        self.attribute_state: dict = {}  # attribute names and the F1 thresholds of the latest validation
        self.sink = MetricsSink(config["run_name"], config.get("tensorboard_dir"),
                                config.get("console")) if self.rank == 0 else None
        self.policy = MidEpochPolicy(cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_s, self.world, device)

    def run(self) -> None:
        if self.checkpoint:
            self.restore(self.checkpoint)
        self.attempt_start = self.start_epoch
        for epoch in range(self.start_epoch, self.cfg.run.epochs):
            tally, stop = self.train_epoch(epoch)
            if stop is not None:  # every rank stops here alike; rank 0 tells the driver why
                if self.rank == 0:
                    stopped_run.write(self.config["run_path"], stop)
                break
            metrics = self.validate(epoch, tally)
            self.history.append(metrics)
            if self.sink is not None:
                self.sink.epoch(metrics, self.cfg.run.epochs)
            self.save(epoch, metrics)
        if self.sink is not None:
            self.sink.close()

    def restore(self, checkpoint) -> None:
        """Continue from `checkpoint`: weights, optimiser, schedule, input stream, generators, and a
        mid-epoch checkpoint's epoch where it stopped."""
        state = contents.load_reported(checkpoint, self.device)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.attribute_state.update(state.get("attributes") or {})
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step, self.history = state["step"], state["history"]
        restored = self.loader.restore(state["streams"])
        if state.get("rng") and len(state["rng"]) == self.world:  # dropout draws continue where they were
            set_rng_state(state["rng"][self.rank], self.device)
        tallies = state.get("tallies")  # a mid-epoch checkpoint: its epoch continues
        self.start_epoch = state["epoch"] if tallies else state["epoch"] + 1
        if tallies and restored == "exact":
            self.resumed = EpochTally.resume(tallies[self.rank], self.device, self.rank)
        if self.sink:
            self.sink.say(restore_line(checkpoint.path, state, self.config.get("fit_id")))
        if self.config.get("replay_history"):  # a restarted Tune trial starts its result history from scratch
            for metrics in self.history:
                ray.train.report(metrics, checkpoint=None)

    def train_epoch(self, epoch: int) -> tuple[EpochTally, str | None]:
        """The epoch's steps, and why the run cannot go on (its loss diverged) or None."""
        cfg, loader = self.cfg, self.loader
        train_mode(self.net, cfg.optim.trainable_from)
        tally = self.resumed or EpochTally(self.device, self.rank, loader.skipped)
        self.resumed, self.resumed_from = None, tally.done
        last_note = time.perf_counter()
        batches = loader.epoch(epoch)
        uneven = self.world > 1 and cfg.data.sampling == "uniform"  # uniform epochs may end a batch apart
        with self.ddp.join() if uneven else nullcontext():
            while True:
                t = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                tally.waited += time.perf_counter() - t
                self.train_step(x, y, tally)
                now = time.perf_counter()
                if self.sink is not None and now - last_note >= cfg.run.progress_every_s:
                    last_note = now
                    self.sink.progress(epoch, cfg.run.epochs, tally.done, loader.steps_per_epoch,
                                       tally.seen * self.world / tally.elapsed,
                                       float(tally.sums["loss"]) / tally.seen, tally.waited / tally.elapsed,
                                       tally.elapsed)
                if self.policy.enabled and self.policy.due(tally.done, loader.common_steps):
                    if not stopped_run.all_finite(tally.sums, self.world, self.device):
                        return tally, self.diverged(epoch)  # no checkpoint of diverged weights
                    self.save_mid_epoch(epoch, tally)
        if not stopped_run.all_finite(tally.sums, self.world, self.device):
            return tally, self.diverged(epoch)
        return tally, None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, tally: EpochTally) -> None:
        with autocast(self.cfg, self.device):
            losses = self.step_fn(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.scheduler.step_batch()
        self.step += 1
        tally.add(losses, y)

    def diverged(self, epoch: int) -> str:
        return stopped_run.diverged_reason(epoch, self.cfg.run.epochs, self.step, self.lr)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def validate(self, epoch: int, tally: EpochTally) -> dict:
        """Score the epoch's weights (the moving average with EMA) on the val set: the epoch's metrics,
        the same on every rank."""
        if self.gpu:
            torch.cuda.synchronize(self.device)  # the epoch's time includes the queued GPU work
        elapsed = tally.elapsed
        validated = self.net if self.ema is None else self.ema.module
        if self.world > 1:  # each rank's last forward updated its own batch-norm statistics: validate rank
            for buffer in validated.buffers():  # 0's, which the checkpoint holds, on every rank
                dist.broadcast(buffer, src=0)
        counts, attribute_scores = evaluate_rank(validated, self.cfg, self.rank, self.world, self.device, self.clips)
        skipped = self.loader.skipped
        totals = torch.tensor([tally.seen, elapsed, tally.waited, skipped, float(tally.digest),
                               skipped - tally.skipped_before], dtype=torch.float64, device=self.device)
        sums = tally.sums
        loss_sums = torch.stack([sums[k] for k in sorted(sums)]) if sums else totals[:0]
        if self.world > 1:
            for tensor in (counts, totals, loss_sums):
                dist.all_reduce(tensor)
        check_epoch_input(epoch, int(totals[0]), int(totals[5]), self.cfg.data.max_skipped_fraction, int(counts[2]))
        top1_error = 1 - float(counts[0] / counts[2])
        self.scheduler.step_epoch(1 - top1_error)  # (plateau schedules follow top-1 accuracy)
        metrics = self.epoch_metrics(epoch, counts, totals, dict(zip(sorted(sums), loss_sums)))
        if attribute_scores is not None:
            metrics.update(self.attribute_metrics(attribute_scores))
        return metrics

    def epoch_metrics(self, epoch: int, counts: torch.Tensor, totals: torch.Tensor, loss_sums: dict) -> dict:
        """The epoch's report from the all-reduced validation `counts`, input `totals` and `loss_sums`."""
        return {"epoch": epoch, "step": self.step, "top1_error": 1 - float(counts[0] / counts[2]),
                "top5_error": 1 - float(counts[1] / counts[2]), "val_images": int(counts[2]),
                "trained_samples": int(totals[0]), "workers": self.world,
                "images_per_s": float(totals[0] / (totals[1] / self.world)),
                "data_wait_fraction": float(totals[2] / totals[1]), "skipped_samples": int(totals[3]),
                "input_checksum": float(totals[4]),  # which labels, in which order: equal runs, equal sums
                "attempt_start_epoch": self.attempt_start,  # > 0: this epoch ran after a restore
                "resumed_from_step": self.resumed_from,  # > 0: this epoch continued a mid-epoch checkpoint
                "lr": self.lr,  # after the epoch's scheduler step
                **({"clip_hit1": float(counts[3] / counts[4])} if self.clips else {}),
                # data.decode: hybrid: the fraction of each batch rank 0 now leaves to the GPU's decoder
                **({"device_decode_share": self.loader.share.value} if self.cfg.data.decode == "hybrid" else {}),
                **{k: float(v / max(totals[0], 1)) for k, v in loss_sums.items()}}

    def attribute_metrics(self, scores: tuple) -> dict:
        """AP needs every score at once: gathered, the same report on every rank; its F1 thresholds are
        kept for the checkpoint."""
        parts = gather(scores, self.world)
        names = self.loader.catalog.attribute_names
        report = attribute_report(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), names)
        self.attribute_state.update(names=names, thresholds=report["thresholds"])
        return {"attr_mAP": report["mAP"], "attr_macro_f1": report["macro_f1"]}

    def save(self, epoch: int, metrics: dict) -> None:
        """The epoch-end checkpoint, reported with the epoch's metrics."""
        streams, rng = gather(self.loader.state_dict(), self.world), gather(rng_state(self.device), self.world)
        report_checkpoint(self.payload(epoch, streams, rng) if self.rank == 0 else None, metrics)
        self.policy.saved()

    def save_mid_epoch(self, epoch: int, tally: EpochTally) -> None:
        """A checkpoint inside the epoch (every rank's tally with it), uploaded in the background."""
        streams, rng = gather(self.loader.state_dict(), self.world), gather(rng_state(self.device), self.world)
        tallies = gather(tally.to_json(), self.world)
        steps = self.loader.steps_per_epoch
        report_checkpoint(self.payload(epoch, streams, rng, tallies) if self.rank == 0 else None,
                          mid_epoch_metrics(epoch, self.step, tally.done, steps, self.lr), upload_async=True)
        self.policy.saved()
        if self.sink is not None:
            self.sink.say(f"epoch {epoch + 1}/{self.cfg.run.epochs} step {tally.done}/{steps}: "
                          f"checkpoint (uploading in the background)")

    def payload(self, epoch: int, streams: list, rng: list, tallies: list | None = None) -> dict:
        """What a checkpoint holds (rank 0's copy; `streams`, `rng`, `tallies`: every rank's)."""
        return contents.build(
            model=self.net.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None, epoch=epoch, step=self.step,
            streams=streams, rng=rng, tallies=tallies, config=self.config["train"], history=self.history,
            fit_id=self.config.get("fit_id"), class_names=self.loader.catalog.class_names,
            attributes=dict(self.attribute_state) or None)


def check_epoch_input(epoch: int, trained: int, skipped: int, max_skipped_fraction: float, validated: int) -> None:
    """Every rank raises alike (the counts are all-reduced): an epoch that trained on nothing, or had to skip
    more than the allowed share of its samples, fails the run instead of reporting a meaningless result."""
    if trained == 0:
        raise RuntimeError(f"epoch {epoch + 1} trained on no samples ({skipped} skipped as unreadable): "
                           f"see the skipped-shard warnings in the workers' log")
    if skipped > max_skipped_fraction * (trained + skipped):
        raise RuntimeError(f"epoch {epoch + 1} skipped {skipped} unreadable samples of {trained + skipped} "
                           f"({skipped / (trained + skipped):.1%}), above data.max_skipped_fraction = "
                           f"{max_skipped_fraction}")
    if validated == 0:
        raise RuntimeError(f"epoch {epoch + 1}: validation scored no images (every val shard unreadable?)")


def restore_line(path: str, state: dict, fit_id: str | None) -> str:
    """The console's one line for a restore: after a failure within this run (`worker_failures` prefixes
    it with the failed ranks; Ray's traceback stays in the logs), or where a resumed run continues."""
    where = f"{os.path.basename(path.rstrip('/'))} (epoch {state['epoch'] + 1}" + (
        f", step {state['step']}, mid-epoch)" if state.get("tallies") else ", its end)")
    if fit_id and state.get("fit_id") == fit_id:
        return f"{RESTARTED}checkpoint {where}, with the same input stream"  # joined with the failed ranks
    return f"continuing from checkpoint {where}"
