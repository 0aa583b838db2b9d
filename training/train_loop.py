"""`train_fn_per_worker`: what every Ray Train worker runs.  Data and model come from factories; the
loop calls `model(x, y)` for a dict of losses, so it never branches on architecture or relay mode."""

from __future__ import annotations

import os
from contextlib import nullcontext
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipelines.console import quiet_console_handlers
from pipelines.online.catalog import Catalog
from pipelines.online.clips import ClipTransform
from pipelines.online.loader import LoaderConfig, ShardLoader, eval_batches
from pipelines.online.ray_ingest import IngestSpec
from pipelines.online.ray_input import RayDataInput
from pipelines.online.transforms import EvalTransform, TrainTransform
from training.attribute_metrics import attribute_report
from training.checkpointing import (CHECKPOINT_FILE, MidEpochPolicy, inference_weights, load_checkpoint_file,
                                    mid_epoch_metrics, report_checkpoint)
from training.config import TrainConfig, from_dict
from training.epoch_tally import EpochTally
from training.freezing import freeze, train_mode
from training.models import create_model, init_from_shallower
from training.metrics_sink import MetricsSink
from training.optim import make_ema, make_optimizer, make_scheduler
from training import stopped_run
from training.pretrained import load_pretrained
from training.topk import log_mean_exp, top_classes
from training.worker_failures import RESTARTED



def build_model(cfg: TrainConfig, warm_start: bool = True):
    """The configured model, its stages below `optim.trainable_from` frozen.  With `warm_start`, started
    from `model.init_from` (a trained shallower VGG: VGG's trick) or `model.pretrained`."""
    m = cfg.model
    model = create_model(m.name, m.num_classes, mode=m.mode, branch=m.branch, aux_head=m.aux_head,
                         aux_weight=m.aux_weight, overlap=m.overlap, label_smoothing=cfg.optim.label_smoothing,
                         num_attributes=m.num_attributes, attribute_weight=m.attribute_weight,
                         scene_weight=m.scene_weight, **m.options)
    if m.init_from and warm_start:
        state = load_checkpoint_file(m.init_from)
        shallow = build_model(from_dict(state["config"]), warm_start=False)
        shallow.load_state_dict(inference_weights(state))
        init_from_shallower(model.backbone, shallow.backbone)
    if m.pretrained and warm_start:
        load_pretrained(model, m.name, m.pretrained, m.options, strict=m.pretrained_strict)
    freeze(model, cfg.optim.trainable_from)
    return model


def train_transform(cfg: TrainConfig) -> TrainTransform:
    d = cfg.data
    pca = None
    if d.color_pca:
        from pipelines import color_pca
        pca = color_pca.load(d.train_shards)
    return TrainTransform(crop=d.crop, size=d.size, jitter=tuple(d.jitter), flip=d.flip, pca=pca)


def clip_offsets(cfg) -> tuple[int, ...] | None:
    """The frames the configured video network takes (built on the meta device: no memory, no time);
    None for an image network."""
    with torch.device("meta"):
        return getattr(build_model(cfg, warm_start=False).backbone, "clip_offsets", None)


def clip_transform(cfg: TrainConfig, offsets: tuple[int, ...] | None) -> ClipTransform | None:
    """For a video network (`offsets`: the frames its backbone takes, `clip_offsets`), clips of the stored
    videos at their stored rate; None for an image network."""
    if offsets is None:
        return None
    fps = Catalog.load(cfg.data.train_shards).video["fps"]
    return ClipTransform(offsets=tuple(offsets), fps=fps, size=cfg.data.size, flip=cfg.data.flip,
                         clips=cfg.data.eval_clips)


def ingest_spec(cfg: TrainConfig, clips: ClipTransform | None = None) -> IngestSpec:
    """What `data.ingest: ray_data`'s tasks need to make the training rows (a video network's `clips`)."""
    d = cfg.data
    return IngestSpec(shards=d.train_shards, mode=d.sampling, seed=cfg.run.seed,
                      transform=clips or train_transform(cfg), attributes=cfg.model.num_attributes,
                      block=d.read_block, chunk=d.ingest_chunk)


def build_train_loader(cfg: TrainConfig, rank: int, world: int, device, plan=None,
                       clips: ClipTransform | None = None) -> ShardLoader | RayDataInput:
    """The rank's training input: its own loader (of `clips` for a video network), or with
    `data.ingest: ray_data` its share of the cluster's pipeline (`plan`: the run's EpochPlan actor)."""
    d = cfg.data
    channels_last = device.type == "cuda" and cfg.run.channels_last and clips is None
    if d.ingest == "ray_data":
        return RayDataInput(ingest_spec(cfg, clips), plan, rank, world, d.batch_size, device, channels_last,
                            d.ingest_prefetch)
    transform = clips or train_transform(cfg)
    return ShardLoader(LoaderConfig(shards=d.train_shards, mode=d.sampling, batch_size=d.batch_size,
                                    num_workers=d.loader_workers, seed=cfg.run.seed, buffer_size=d.shuffle_buffer,
                                    block=d.read_block, decode=d.decode, attributes=cfg.model.num_attributes),
                       transform, rank=rank, world_size=world, device=device, channels_last=channels_last)


def autocast(cfg: TrainConfig, device) -> torch.autocast:
    """The training's mixed precision, for its steps and its validation alike: on GPU only."""
    return torch.autocast(device.type, dtype=getattr(torch, cfg.run.amp_dtype),
                          enabled=device.type == "cuda" and cfg.run.amp)


def evaluate_rank(model, cfg: TrainConfig, rank: int, world: int, device,
                  clips: ClipTransform | None = None) -> tuple[torch.Tensor, tuple | None]:
    """[top-1 correct, top-5 correct, seen, clip hits, clips] over this rank's exact share of the val set
    (no padding), under the training's autocast (as timm validates); `evaluate.py` scores checkpoints in
    fp32.  Images: the centre crop.  Videos (`clips`): Karpathy et al.'s protocol, each video's
    `clips.clips` clips (and their mirrors), class probabilities averaged per clip (Clip Hit@1) and per
    video (top-1/top-5 are Video Hit@1/5).  With attributes also (probabilities, targets) of this rank's
    share, as numpy arrays."""
    transform = clips or EvalTransform("center", size=cfg.data.size, resize=cfg.data.eval_resize)
    batch = max(1, cfg.data.batch_size // (clips.views_per_clip * clips.clips)) if clips else cfg.data.batch_size
    normalize = transform.normalizer()
    counts = torch.zeros(5, dtype=torch.float64, device=device)
    attributes = cfg.model.num_attributes
    k = model.backbone.num_classes
    scores, targets = [], []
    model.eval()
    with torch.no_grad(), autocast(cfg, device):
        for x, y in eval_batches(cfg.data.val_shards, transform, rank, world, batch, cfg.data.loader_workers,
                                 attributes):
            x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            logits, attr_logits = model.predict(x)
            # a hit is any of the sample's classes: its one class, or a multi-label split's row of them
            hot = y[:, 1:] if y.dim() == 2 and not attributes else F.one_hot(y[:, 0] if attributes else y, k)
            ranking = logits.float()  # one view: its logits rank as its log posteriors
            if clips is not None:  # (videos x clips x views_per_clip, K) -> per clip, per video
                per_clip = log_mean_exp(ranking.log_softmax(1).view(len(y), -1, clips.views_per_clip, k), 2)
                counts[3] += hot.gather(1, per_clip.argmax(2)).sum()
                counts[4] += per_clip.shape[0] * per_clip.shape[1]
                ranking = log_mean_exp(per_clip, 1)
            top5 = top_classes(ranking, 5)
            counts[0] += hot.gather(1, top5[:, :1]).sum()
            counts[1] += hot.gather(1, top5).amax(1).sum()
            counts[2] += len(y)
            if attributes:
                scores.append(torch.sigmoid(attr_logits.float()).cpu().numpy())
                targets.append(y[:, 1:].cpu().numpy())
    if not attributes:
        return counts, None
    return counts, (np.concatenate(scores) if scores else np.zeros((0, attributes), np.float32),
                    np.concatenate(targets) if targets else np.zeros((0, attributes), np.int64))


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


def train_fn_per_worker(config: dict) -> None:
    if not config.get("verbose"):
        # Ray Train sends this worker's root logger (its per-report "Reporting training result" lines
        # included) to the console; the console keeps warnings, Train's worker log file keeps everything
        quiet_console_handlers()
    if config.get("shared_marker"):  # a node the autoscaler added after the driver checked the shared filesystem
        config["shared_marker"].check("config key 'run.storage_path'")
    cfg = from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu and cfg.run.cudnn_benchmark
    torch.manual_seed(cfg.run.seed)
    checkpoint = ray.train.get_checkpoint()
    model = build_model(cfg, warm_start=checkpoint is None)
    clips = clip_transform(cfg, getattr(model.backbone, "clip_offsets", None))
    if gpu and cfg.run.channels_last and clips is None:  # (Conv3d's layout would be channels_last_3d)
        model = model.to(memory_format=torch.channels_last)
    ddp = ray.train.torch.prepare_model(model)  # DDP on several workers; the model itself on one
    net = model  # the un-wrapped model: eval, checkpoints
    loader = build_train_loader(cfg, rank, world, device, config.get("ingest_plan"), clips)
    optimizer = make_optimizer(net, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, loader.steps_per_epoch, cfg.run.epochs)
    ema = make_ema(net, cfg.optim.ema_decay)  # every rank keeps one: their weights are identical under DDP
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=gpu and cfg.run.amp and cfg.run.amp_dtype == "float16")
    step_fn = torch.compile(ddp) if cfg.run.compile else ddp
    start_epoch, step, history, resumed = 0, 0, [], None
    attribute_state: dict = {}  # attribute names and the F1 thresholds of the latest validation
    sink = MetricsSink(config["run_name"], config.get("tensorboard_dir"), config.get("console")) if rank == 0 else None

    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        attribute_state.update(state.get("attributes") or {})
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step, history = state["step"], state["history"]
        restored = loader.restore(state["streams"])
        if state.get("rng") and len(state["rng"]) == world:  # dropout draws continue where they were
            set_rng_state(state["rng"][rank], device)
        tallies = state.get("tallies")  # a mid-epoch checkpoint: its epoch continues
        start_epoch = state["epoch"] if tallies else state["epoch"] + 1
        if tallies and restored == "exact":
            resumed = EpochTally.resume(tallies[rank], device, rank)
        if sink:
            sink.say(restore_line(checkpoint.path, state, config.get("fit_id")))
        if config.get("replay_history"):  # a restarted Tune trial starts its result history from scratch
            for metrics in history:
                ray.train.report(metrics, checkpoint=None)

    attempt_start = start_epoch
    policy = MidEpochPolicy(cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_s, world, device)

    def payload(epoch: int, streams: list, rng: list, tallies: list | None = None) -> dict:
        """What a checkpoint holds (rank 0's copy; `streams`, `rng`, `tallies`: every rank's)."""
        return {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "streams": streams,
                "rng": rng, "tallies": tallies, "config": config["train"], "history": history,
                "fit_id": config.get("fit_id"),
                "class_names": loader.catalog.class_names,  # what evaluate.py checks shards against
                "attributes": dict(attribute_state) or None}  # names, and F1 thresholds chosen on validation

    for epoch in range(start_epoch, cfg.run.epochs):
        train_mode(net, cfg.optim.trainable_from)
        tally = resumed or EpochTally(device, rank, loader.skipped)
        resumed, resumed_from = None, tally.done
        last_note = time.perf_counter()
        batches = loader.epoch(epoch)
        common_steps = loader.common_steps
        stop = None  # why the run cannot go on
        with ddp.join() if world > 1 and cfg.data.sampling == "uniform" else nullcontext():  # uneven last batches
            while True:
                t = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                tally.waited += time.perf_counter() - t
                with autocast(cfg, device):
                    losses = step_fn(x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
                scaler.update()
                if ema is not None:
                    ema.update_parameters(net)
                scheduler.step_batch()
                step += 1
                tally.add(losses, y)
                now = time.perf_counter()
                if sink is not None and now - last_note >= cfg.run.progress_every_s:
                    last_note = now
                    sink.progress(epoch, cfg.run.epochs, tally.done, loader.steps_per_epoch,
                                  tally.seen * world / tally.elapsed, float(tally.sums["loss"]) / tally.seen,
                                  tally.waited / tally.elapsed, tally.elapsed)
                if policy.enabled and policy.due(tally.done, common_steps):
                    if not stopped_run.all_finite(tally.sums, world, device):  # no checkpoint of diverged weights
                        stop = stopped_run.diverged_reason(epoch, cfg.run.epochs, step, optimizer.param_groups[0]["lr"])
                        break
                    streams, rng = gather(loader.state_dict(), world), gather(rng_state(device), world)
                    tallies = gather(tally.to_json(), world)
                    report_checkpoint(payload(epoch, streams, rng, tallies) if rank == 0 else None,
                                      mid_epoch_metrics(epoch, step, tally.done, loader.steps_per_epoch,
                                                        optimizer.param_groups[0]["lr"]), upload_async=True)
                    policy.saved()
                    if sink is not None:
                        sink.say(f"epoch {epoch + 1}/{cfg.run.epochs} step {tally.done}/{loader.steps_per_epoch}: "
                                 f"checkpoint (uploading in the background)")
        if stop is None and not stopped_run.all_finite(tally.sums, world, device):
            stop = stopped_run.diverged_reason(epoch, cfg.run.epochs, step, optimizer.param_groups[0]["lr"])
        if stop is not None:  # every rank stops here alike; rank 0 tells the driver why
            if rank == 0:
                stopped_run.write(config["run_path"], stop)
            break
        if gpu:
            torch.cuda.synchronize(device)  # the epoch's time includes the queued GPU work
        elapsed = tally.elapsed
        validated = net if ema is None else ema.module
        if world > 1:  # each rank's last forward updated its own batch-norm statistics: validate rank 0's,
            for buffer in validated.buffers():  # which the checkpoint holds, on every rank
                dist.broadcast(buffer, src=0)
        counts, attribute_scores = evaluate_rank(validated, cfg, rank, world, device, clips)
        totals = torch.tensor([tally.seen, elapsed, tally.waited, loader.skipped, float(tally.digest),
                               loader.skipped - tally.skipped_before], dtype=torch.float64, device=device)
        sums = tally.sums
        loss_sums = torch.stack([sums[k] for k in sorted(sums)]) if sums else totals[:0]
        if world > 1:
            for tensor in (counts, totals, loss_sums):
                dist.all_reduce(tensor)
        check_epoch_input(epoch, int(totals[0]), int(totals[5]), cfg.data.max_skipped_fraction, int(counts[2]))
        top1_err, top5_err = 1 - float(counts[0] / counts[2]), 1 - float(counts[1] / counts[2])
        scheduler.step_epoch(1 - top1_err)
        metrics = {"epoch": epoch, "step": step, "top1_error": top1_err, "top5_error": top5_err,
                   "val_images": int(counts[2]), "trained_samples": int(totals[0]), "workers": world,
                   "images_per_s": float(totals[0] / (totals[1] / world)),
                   "data_wait_fraction": float(totals[2] / totals[1]), "skipped_samples": int(totals[3]),
                   "input_checksum": float(totals[4]),  # which labels, in which order: equal runs, equal sums
                   "attempt_start_epoch": attempt_start,  # > 0: this epoch ran after a restore
                   "resumed_from_step": resumed_from,  # > 0: this epoch continued a mid-epoch checkpoint
                   "lr": optimizer.param_groups[0]["lr"],
                   **({"clip_hit1": float(counts[3] / counts[4])} if clips else {}),
                   # data.decode: hybrid: the fraction of each batch rank 0 now leaves to the GPU's decoder
                   **({"device_decode_share": loader.share.value} if cfg.data.decode == "hybrid" else {}),
                   **{k: float(v / max(totals[0], 1)) for k, v in zip(sorted(sums), loss_sums)}}
        if attribute_scores is not None:  # AP needs every score at once: gathered, the same report on every rank
            parts = gather(attribute_scores, world)
            report = attribute_report(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                      loader.catalog.attribute_names)
            attribute_state.update(names=loader.catalog.attribute_names, thresholds=report["thresholds"])
            metrics.update(attr_mAP=report["mAP"], attr_macro_f1=report["macro_f1"])
        history.append(metrics)
        if sink is not None:
            sink.epoch(metrics, cfg.run.epochs)
        streams, rng = gather(loader.state_dict(), world), gather(rng_state(device), world)
        report_checkpoint(payload(epoch, streams, rng) if rank == 0 else None, metrics)
        policy.saved()
    if sink is not None:
        sink.close()


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def rng_state(device) -> dict:
    """This rank's torch generators (dropout's draws): a resumed run continues them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
