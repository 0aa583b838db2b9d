"""Where each epoch's metrics go besides `ray.train.report`: TensorBoard event files and Ray custom
metrics (`ray.util.metrics`), which the Ray dashboard's metrics view and Prometheus pick up."""

from __future__ import annotations

from ray.util.metrics import Gauge

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
    def __init__(self, run_name: str, tensorboard_dir: str | None):
        self.tags = {"run": run_name}
        self.gauges = {k: Gauge(name, description=desc, tag_keys=("run",)) for k, (name, desc) in GAUGES.items()}
        self.writer = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir)

    def epoch(self, metrics: dict) -> None:
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
