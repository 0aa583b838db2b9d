"""Scoring image files with one model, as `training/predict.py` does: the files given (`image_files`), the
model with its class names and view geometry (`Model`), each image's top classes, attributes and class
activation map (CAM or Grad-CAM), and the map drawn over the image (`overlay_png`)."""

from __future__ import annotations

import io
import json
import os
import re
import sys

import numpy as np
import torch

from common.storage import Location


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def image_files(inputs: list[str]) -> list[str]:
    """Each file as given; each folder's image files, recursively, in sorted order."""
    found = []
    for given in inputs:
        if os.path.isdir(given):
            found += sorted(os.path.join(folder, name) for folder, _, names in os.walk(given) for name in names
                            if name.lower().endswith(IMAGE_EXTENSIONS))
        else:
            found.append(given)
    return found


def output_name(path: str, taken: set[str]) -> str:
    """A file name for the image's map, readable and unique within this run."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.relpath(path))[0].lstrip("./")) or "image"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return f"{name}.cam.png"


class Model:
    """A checkpoint's exported network with what scoring an image needs: class names and view geometry."""

    def __init__(self, checkpoint: str, arch: str | None = None, categories: str | None = None):
        from pipelines.online.transforms import EvalTransform
        from training.checkpoint.contents import inference_weights
        from training.checkpoint.lookup import CheckpointError, resolve_checkpoint
        from training.class_names import class_names, read_class_names
        from training.config import from_dict
        from training.models import build_model
        from training.normalization import mean_std

        self.path, state, self.note = resolve_checkpoint(checkpoint, arch, read_class_names(categories))
        self.summary = state.get("summary")
        cfg = from_dict(state["config"])
        model = build_model(cfg)
        if hasattr(model.backbone, "clip_offsets"):
            raise CheckpointError(f"--checkpoint {checkpoint}: {cfg.model.name} is a video network; predict.py "
                                  f"scores images (videos: training/evaluate.py on video shards)")
        model.load_state_dict(inference_weights(state))
        self.backbone = model.export().eval()
        self.attribute_head = model.attribute_head.eval() if model.attribute_head is not None else None
        saved = state.get("attributes") or {}
        self.attribute_names = saved.get("names") or [f"attribute{i}" for i in range(cfg.model.num_attributes)]
        self.thresholds = saved.get("thresholds") or [0.5] * cfg.model.num_attributes
        self.size, self.resize = cfg.data.size, cfg.data.eval_resize
        self.transform = EvalTransform("center", size=self.size, resize=self.resize, **mean_std(cfg.data))
        names = state.get("class_names")
        if not names and not state.get("published"):  # a published file's: --categories, else numbers
            try:
                names = class_names(cfg.data.train_shards)
            except (OSError, ValueError):
                names = None
        self.names = list(names) if names else [str(i) for i in range(cfg.model.num_classes)]

    def view(self, data: bytes) -> torch.Tensor:
        """uint8 (3, size, size): the image as sharding stores it, centre-cropped as evaluation does."""
        from pipelines.media.images import ImageSettings, prepare_image

        prepared = prepare_image(data, ImageSettings(image_size=max(16, self.resize), resize="shorter"))
        return self.transform.views(prepared.jpeg)[0]

    def predict(self, view: torch.Tensor, top: int, method: str) -> tuple[list, list, np.ndarray]:
        """(top classes, predicted attributes, activation map), names with probabilities; ranked on the log
        posteriors, as evaluation ranks them."""
        from training.cam import activation_map, class_scores
        from training.topk import top_classes

        x = self.transform.normalizer()(view[None])
        logits, features = class_scores(self.backbone, x)
        log_probs = logits.detach().float().log_softmax(1)
        if not bool(torch.isfinite(log_probs).all()):
            raise ValueError("the model gave NaN or infinite scores for this image")
        best = top_classes(log_probs, top)[0].tolist()
        ranked = [(self.names[i], float(log_probs[0, i].exp())) for i in best]
        attributes = []
        if self.attribute_head is not None:
            with torch.no_grad():
                scores = torch.sigmoid(self.attribute_head(features.detach())[0].float()).tolist()
            attributes = sorted(((n, p) for n, p, t in zip(self.attribute_names, scores, self.thresholds) if p >= t),
                                key=lambda pair: -pair[1])
        cam = activation_map(self.backbone, features, logits, best[0], tuple(view.shape[1:]), method)
        return ranked, attributes, cam


def overlay_png(view: torch.Tensor, cam: np.ndarray, ranked: list[tuple[str, float]], title: str,
                attributes: list[tuple[str, float]] = ()) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = view.permute(1, 2, 0).numpy()
    heat = plt.get_cmap("jet")(cam)[..., :3]
    blended = (0.5 * image / 255.0 + 0.5 * heat).clip(0, 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 4.6))
    a.imshow(image)
    a.set_title("what the network scored", fontsize=9)
    b.imshow(blended)
    b.set_title(f"where it saw {ranked[0][0]}", fontsize=9)
    for ax in (a, b):
        ax.axis("off")
    fig.suptitle(title + "\n" + ", ".join(f"{name} {p:.0%}" for name, p in ranked)
                 + ("\nattributes: " + ", ".join(f"{name} {p:.0%}" for name, p in attributes) if attributes else ""),
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def score_files(model: Model, files: list[str], out: Location, top: int, method: str) -> int:
    """Each image's top classes, attributes and map (written to `out`, with predictions.jsonl); 1 if an
    image could not be read (the others are scored)."""
    lines, failed, taken = [], 0, set()
    for path in files:
        try:
            if not os.path.isfile(path):  # a FIFO or device named .jpg: reading it would wait forever
                raise ValueError("not_a_file: not a regular file")
            with open(path, "rb") as f:
                view = model.view(f.read())
            ranked, attributes, cam = model.predict(view, top, method)
        except Exception as exc:  # this image only: a bad file must not stop the others
            failed += 1
            print(f"{path}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        name = output_name(path, taken)
        out.write_atomic(name, overlay_png(view, cam, ranked, path, attributes))
        record = {"image": path, "top": [[c, round(p, 6)] for c, p in ranked]}
        if model.attribute_head is not None:
            record["attributes"] = [[n, round(p, 6)] for n, p in attributes]
        lines.append(json.dumps({**record, "cam": name}))
        said = "; attributes: " + (", ".join(f"{n} {p:.0%}" for n, p in attributes) or "none") \
            if model.attribute_head is not None else ""
        print(f"{path}: " + ", ".join(f"{c} {p:.1%}" for c, p in ranked) + said + f" -> {out.uri(name)}")
    out.write_atomic("predictions.jsonl", "".join(line + "\n" for line in lines).encode())
    print(f"{len(lines)} of {len(files)} images scored -> {out.uri('predictions.jsonl')}"
          + (f"; {failed} could not be read" if failed else ""))
    return 1 if failed else 0
