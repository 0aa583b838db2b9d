"""Where rank 0's metrics go besides `ray.train.report`: one console line per epoch (and one every
`run.progress_every_s` inside it), TensorBoard event files, and Ray custom metrics
(`ray.util.metrics`), which the Ray dashboard's metrics view and Prometheus pick up.

Console lines go to the driver through its `ConsoleRelay` queue when it has one, and always to this
worker's log (Ray Train's worker log file; the console too with `--verbose`)."""

from __future__ import annotations

import logging

from ray.util.metrics import Gauge

# Ray Train sends worker logs to the driver's console; a print() there appears twice (Ray 2.60)
log = logging.getLogger(__name__)

# metric key -> (Ray metric name, description)
GAUGES = {
    "top1_error": ("places_val_top1_error", "validation top-1 error after the epoch"),
    "top5_error": ("places_val_top5_error", "validation top-5 error after the epoch"),
    "loss": ("places_train_loss", "training loss (loss1 + aux_weight * loss2 ...), epoch mean"),
    "images_per_s": ("places_train_images_per_s", "training images per second, all workers"),
    "data_wait_fraction": ("places_data_wait_fraction", "fraction of training time spent waiting for data"),
    "skipped_samples": ("places_skipped_samples", "unreadable or undecodable samples skipped so far"),
    "lr": ("places_learning_rate", "learning rate at the end of the epoch"),
}


class MetricsSink:
    def __init__(self, run_name: str, tensorboard_dir: str | None, console=None):
        self.tags = {"run": run_name}
        self.console = console  # a ray.util.queue.Queue the driver prints, or None
        self.gauges = {k: Gauge(name, description=desc, tag_keys=("run",)) for k, (name, desc) in GAUGES.items()}
        self.writer = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir)

    def say(self, line: str) -> None:
        log.info(line)
        if self.console is not None:
            try:
                self.console.put(line, timeout=10)
            except Exception as exc:  # a driver gone or stuck must not stop training: keep the log only
                log.warning("console relay unavailable, progress lines stay in this worker's log: %r", exc)
                self.console = None

    def progress(self, epoch: int, epochs: int, step: int, steps: int, images_per_s: float, loss: float,
                 data_wait: float, elapsed_s: float) -> None:
        self.say(progress_line(epoch, epochs, step, steps, images_per_s, loss, data_wait, elapsed_s))

    def epoch(self, metrics: dict, epochs: int) -> None:
        self.say(epoch_line(metrics, epochs))
        for key, gauge in self.gauges.items():
            if key in metrics:
                gauge.set(float(metrics[key]), tags=self.tags)
        if self.writer is not None:
            for key, value in metrics.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_line(epoch: int, epochs: int, step: int, steps: int, images_per_s: float, loss: float,
                  data_wait: float, elapsed_s: float) -> str:
    eta = elapsed_s / max(step, 1) * max(steps - step, 0)
    return (f"epoch {epoch + 1}/{epochs} step {step}/{steps} ({step / max(steps, 1):.0%}): "
            f"{images_per_s:,.0f} img/s, loss {loss:.4f}, data wait {data_wait:.0%}, epoch ETA {duration(eta)}")


def duration(seconds: float) -> str:
    """1h02m, 4m05s, 12s."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def scores_text(m: dict) -> str:
    """An epoch's validation scores: top-1/top-5 error, or for videos Karpathy et al.'s Hit@k (Video Hit@k
    is 1 - top-k error over videos)."""
    attributes = f", attributes mAP {m['attr_mAP']:.3f}" if "attr_mAP" in m else ""
    if "clip_hit1" in m:
        return (f"Video Hit@1 {1 - m['top1_error']:.2%}, Video Hit@5 {1 - m['top5_error']:.2%}, "
                f"Clip Hit@1 {m['clip_hit1']:.2%}{attributes} ({m['val_images']} val videos)")
    return (f"top-1 error {m['top1_error']:.2%}, top-5 error {m['top5_error']:.2%}{attributes} "
            f"({m['val_images']} val images)")


def epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch'] + 1}/{epochs} done: {scores_text(m)}, "
            f"loss {m.get('loss', float('nan')):.4f}, {m['images_per_s']:,.0f} img/s, "
            f"data wait {m['data_wait_fraction']:.0%}, lr {m['lr']:.3g}")
