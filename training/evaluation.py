"""Scoring checkpoints under the papers' test protocols, alone and fused (`training/evaluate.py` is
its command line): the inputs checked before Ray starts (`check_inputs`, `view_geometry`, `clip_transforms`),
then Ray Data batch inference (`training/inference.py`), fusion (`fuse`), metrics, the challenge's
predictions file and the plots (`score`)."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
import torch

from common.hashing import stable_hash
from common.storage import Location
from pipelines.online.catalog import Catalog, first_different_class
from pipelines.online.clips import ClipTransform
from training.attribute_metrics import attribute_report, plot_attribute_ap
from training.checkpoint.lookup import CheckpointError, resolve_checkpoint
from training.class_names import class_names
from training.inference import losses, predict
from training.topk import log_mean_exp, multi_hot, top_classes, top_errors
from training.video_metrics import video_hits


DEFAULT_SCALES = {"center": (256,), "ten_crop": (256,), "dense": (256, 384, 512), "multi_view": (256, 320),
                  "multi_crop": (256, 384, 512), "multi_crop_dense": (256, 384, 512),
                  "googlenet_144": (256, 288, 320, 352), "clips": ()}


def image_id(source: str, key: str) -> str:
    """The image as the list named it (Places365's val and test lists give bare file names, the challenge's
    ids); a class-folder path stays whole, so `0.jpg` of two classes are two ids.  The sample key where
    the name holds whitespace, which the space-separated format cannot carry."""
    return key if any(c.isspace() for c in source) else source.lstrip("/")


def fuse(logp: np.ndarray, kind: str, fit_mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(N, M, K) per-model log posteriors -> (N, K) fused log scores, and the model weights used:
    average (of the posteriors, in log space), product (of the posteriors: the mean log posterior) or
    learned (a weighted product, the weights fit on the held-out slice)."""
    m = logp.shape[1]
    if kind == "average":
        return log_mean_exp(logp, 1), [1 / m] * m
    if kind == "product":
        return logp.mean(1), [1 / m] * m
    if kind != "learned":
        raise ValueError(f"fusion must be average, product or learned, got {kind!r}")
    if not fit_mask.any():
        raise ValueError("learned fusion needs labeled held-out images (--heldout > 0 on a labeled set)")
    x = torch.from_numpy(logp[fit_mask]).double()
    y = torch.from_numpy(labels[fit_mask]).long()
    raw = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy((raw.softmax(0)[None, :, None] * x).sum(1), y)
        loss.backward()
        return loss

    opt.step(closure)
    weights = raw.detach().softmax(0).numpy()
    return (weights[None, :, None] * logp).sum(1), weights.tolist()


def plot_confusion(fused: np.ndarray, labels: np.ndarray, names: list[str], path: str, pairs: int = 20) -> None:
    """Readable at 365 classes: the most-confused (true -> predicted) pairs, and the worst classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = top_classes(fused, 1)[:, 0]
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None)[:pairs]
    top = [(int(i // k), int(i % k), int(off.flat[i])) for i in flat if off.flat[i] > 0]
    totals = confusion.sum(1)
    error = 1 - np.diag(confusion) / np.maximum(totals, 1)
    worst = np.argsort(-error)[:pairs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.35 * max(len(top), len(worst), 4) + 1.5))
    a.barh([f"{names[t]} -> {names[p]}" for t, p, _ in top][::-1], [n for *_, n in top][::-1], color="tab:red")
    a.set_title("most-confused pairs (true -> predicted), images")
    b.barh([names[i] for i in worst][::-1], error[worst][::-1] * 100, color="tab:blue")
    b.set_title("worst classes: top-1 error (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    Location.write_atomic_uri(path, buf.getvalue())


def check_finite_scores(log_probs: np.ndarray, keys: np.ndarray, checkpoints: list[str]) -> None:
    """NaN or infinite posteriors rank as classes 0 1 2 3 4 for every image: a failure, naming the model."""
    for i, path in enumerate(checkpoints):
        bad = ~np.isfinite(log_probs[:, i].reshape(len(keys), -1)).all(1)
        if bad.any():
            raise RuntimeError(f"{path} gave NaN or infinite scores for {int(bad.sum())} of {len(keys)} images "
                               f"(the first: {keys[bad][0]}); no predictions were written")


def view_geometry(configs: list, protocol: str, size: int | None, scales: list[int] | None) -> tuple[int, tuple]:
    """(crop size, scales): as given, else what the checkpoints were trained and validated at (data.size,
    data.eval_resize; the protocol's scales relative to a 256 shorter side), so that `center` with no
    flags reproduces the training's own validation."""
    trained = {(c.data.size, c.data.eval_resize) for c in configs}
    if (size is None or scales is None) and len(trained) > 1:
        raise CheckpointError(f"the checkpoints were trained at different sizes (data.size, data.eval_resize): "
                              f"{sorted(trained)}; give --size and --scales")
    crop, resize = next(iter(trained))
    if scales is None:
        scales = [round(q * resize / 256) for q in DEFAULT_SCALES[protocol]]
    size = size or crop
    if protocol != "dense" and size > min(scales):  # dense alone scores whole images, no crop
        raise CheckpointError(f"--size {size} is larger than the smallest scale {min(scales)}: {protocol}'s crops "
                              f"would run past the image; give a smaller --size or larger --scales")
    return size, tuple(scales)


def check_inputs(checkpoints: list[str], shards: str, arch: str | None = None,
                 class_names: list[str] | None = None) -> tuple[list[str], list, dict | None]:
    """(the files to score, their training configs, the attributes to score: names and the thresholds
    chosen on validation, or None); a path that is not a checkpoint or a published model file, or shards
    without an index, is one clear error."""
    from training.config import from_dict

    catalog = Catalog.load(shards)
    catalog.check_shards()  # a missing shard would otherwise fail the whole run after the model loads
    paths, configs, attributes = [], [], None
    for path in checkpoints:
        resolved, state, note = resolve_checkpoint(path, arch, class_names)
        for line in (note, state.get("summary")):
            if line:
                print(line)
        cfg = from_dict(state["config"])
        if catalog.num_classes and cfg.model.num_classes != catalog.num_classes:  # 0: an unlabeled test set
            raise CheckpointError(f"--checkpoint {path} predicts {cfg.model.num_classes} classes but {shards} has "
                                  f"{catalog.num_classes}: scores would compare different classes")
        names = state.get("class_names")
        i = first_different_class(names, catalog.class_names)
        if i is not None:
            raise CheckpointError(f"--checkpoint {path} was trained with class {i} = {names[i]!r}, but in {shards} "
                                  f"class {i} is {catalog.class_names[i]!r}")
        saved = state.get("attributes") or {}
        if cfg.model.num_attributes and saved.get("names") and catalog.attribute_names:
            if saved["names"] != catalog.attribute_names:
                raise CheckpointError(f"--checkpoint {path} was trained on the attributes {saved['names'][:4]}..., "
                                      f"{shards} has {catalog.attribute_names[:4]}...: not the same list")
            attributes = attributes or {"names": saved["names"], "thresholds": saved["thresholds"]}
        paths.append(resolved)
        configs.append(cfg)
    return paths, configs, attributes


def clip_transforms(configs: list, shards: str, clips: int) -> list[ClipTransform]:
    """Each checkpoint's test clips of the video shards: the frames its network takes, at the crop size,
    region, test views and mirroring it was trained with."""
    from training.models import clip_offsets_for
    from training.train_input import clips_of

    fps = Catalog.load(shards).video["fps"]
    out = []
    for cfg in configs:
        offsets = clip_offsets_for(cfg)
        if offsets is None:
            raise CheckpointError(f"{shards} holds videos and a checkpoint's model, {cfg.model.name}, is an image "
                                  f"network")
        out.append(clips_of(cfg, offsets, fps, clips))
    return out


def check_room_to_read(actors: int, gpu: bool) -> None:
    """CPU model actors that hold every CPU leave none for Ray Data's read tasks, which then wait
    forever (ray-project/ray#44687): refuse that up front.  GPU actors do not compete for the CPUs; a
    cluster with no CPU yet (a head with CPU: 0) can only be waiting for its autoscaler."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if not gpu and 0 < cpus <= actors:
        raise ValueError(f"--actors {actors}: CPU model actors would hold all {cpus:g} CPUs of the Ray cluster "
                         f"and leave none to read the shards; use at most {max(cpus - 1, 0):g}, or --gpu")


def score(a: argparse.Namespace, checkpoints: list[str], size: int, scales: tuple, attributes: dict | None,
          clips: list[ClipTransform] | None = None) -> int:
    """Predict, fuse, and write the outputs (numbers first); 1 if too much could not be read."""
    if clips:
        print(f"scoring {len(checkpoints)} model(s) on {a.shards}: {a.clips} clips per video"
              f"{', and their mirrors' if any(c.flip for c in clips) else ''}", flush=True)
    else:
        print(f"scoring {len(checkpoints)} model(s) on {a.shards}: {a.protocol}, crop {size}, scales "
              f"{' '.join(map(str, scales))}{', and attributes' if attributes else ''}", flush=True)
    result = predict(checkpoints, a.shards, a.protocol, scales, size, a.actors, a.gpu, a.batch_size,
                     len(attributes["names"]) if attributes else 0, clips, a.arch)
    catalog = Catalog.load(a.shards)
    skipped, differ = losses(catalog, result)
    result = {k: v[result["ok"]] for k, v in result.items()}
    check_finite_scores(result["log_probs"], result["key"], checkpoints)
    metrics, fused, scored = measure(a, result, checkpoints, size, scales, attributes, clips is not None,
                                     {"skipped_samples": skipped, "shards_not_as_listed": differ})
    top5 = top_classes(fused, 5)
    lines = [f"{image_id(src, key)} {' '.join(map(str, row))}"
             for src, key, row in zip(result["source"], result["key"], top5)]
    Location.write_atomic_uri(os.path.join(a.out, "predictions.csv"), ("\n".join(lines) + "\n").encode())
    Location.write_atomic_uri(os.path.join(a.out, "metrics.json"), (json.dumps(metrics, indent=1) + "\n").encode())
    plots = report(a, metrics, fused[scored], result["cls"][scored], checkpoints, attributes, clips is not None)
    print(f"wrote {os.path.join(a.out, 'metrics.json')}, predictions.csv" + "".join(f", {p}" for p in plots))
    return check_unread(a, catalog.total, skipped, differ)


def measure(a: argparse.Namespace, result: dict, checkpoints: list[str], size: int, scales: tuple,
            attributes: dict | None, video: bool, reading: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, the fused log posteriors, which images are scored: those not held out to fit the fusion);
    `reading`: what could not be read, as the metrics report it."""
    log_probs, labels = result["log_probs"], result["cls"]
    labeled = bool((labels >= 0).all())
    heldout = np.array([stable_hash("heldout", k) % 10_000 < a.heldout * 10_000 for k in result["key"]])
    fit_mask = heldout & labeled if a.fusion == "learned" else np.zeros(len(labels), bool)
    # every fusion mode that this run can fit, on the same images as every single model: the held-out
    # slice exists only with --fusion learned, so average and product alone use every image otherwise
    modes = ["average", "product"] + (["learned"] if a.fusion == "learned" else [])
    fusions = {mode: fuse(log_probs, mode, fit_mask, labels) for mode in modes}
    fused, weights = fusions[a.fusion]
    scored = ~fit_mask
    metrics = {"protocol": a.protocol, "scales": list(scales), "size": size, "fusion": a.fusion,
               "fusion_weights": weights, "checkpoints": checkpoints, "images": int(len(labels)),
               "heldout_for_fusion": int(fit_mask.sum()), **reading}
    names = class_names(a.shards)
    if labeled:  # a hit is any of a sample's classes (several in a multi-label set)
        targets = multi_hot(labels[scored], result["labels"][scored], len(names))
        metrics["models"] = {path: top_errors(log_probs[scored, i], targets) for i, path in enumerate(checkpoints)}
        metrics["fused"] = top_errors(fused[scored], targets)
        if len(checkpoints) > 1:
            metrics["fusions"] = {mode: {"weights": w, **top_errors(f[scored], targets)}
                                  for mode, (f, w) in fusions.items()}
        if video:
            metrics["video"] = video_hits(result["clip_log_probs"][scored], targets, checkpoints, names)
    if attributes:  # the thresholds were chosen on validation when training: applied here unchanged
        metrics["attributes"] = attribute_report(result["attr_probs"][scored], result["attr"][scored],
                                                 attributes["names"], attributes["thresholds"])
    return metrics, fused, scored


def report(a: argparse.Namespace, metrics: dict, fused: np.ndarray, labels: np.ndarray, checkpoints: list[str],
           attributes: dict | None, video: bool) -> list[str]:
    """The results' console lines and plots (of the scored images' `fused` scores); returns the plots' names."""
    plots = []
    if "fused" in metrics:  # labelled images; after the numbers: a plot must never cost them
        plot_confusion(fused, labels, class_names(a.shards), os.path.join(a.out, "confusion.png"))
        plots.append("confusion.png")
        if video:
            for label, hits in metrics["video"].items():
                print(f"{label}: Video Hit@1 {hits['video_hit@1']:.2%}, Video Hit@5 {hits['video_hit@5']:.2%}, "
                      f"Clip Hit@1 {hits['clip_hit@1']:.2%} ({hits['videos']} videos)")
        else:
            what = "model" if len(checkpoints) == 1 else f"fused ({a.fusion} of {len(checkpoints)} models)"
            print(f"{what}, {a.protocol}: top-1 error {metrics['fused']['top1_error']:.2%}, top-5 error "
                  f"{metrics['fused']['top5_error']:.2%} ({len(labels)} images)")
    if attributes:
        attribute_metrics = metrics["attributes"]
        plot_attribute_ap(attribute_metrics, os.path.join(a.out, "attribute_ap.png"))
        plots.append("attribute_ap.png")
        print(f"attributes: mAP {attribute_metrics['mAP']:.3f}, macro F1 {attribute_metrics['macro_f1']:.3f} at the "
              f"thresholds chosen on validation ({len(attributes['names'])} attributes)")
    return plots


def check_unread(a: argparse.Namespace, listed: int, skipped: int, differ: list[str]) -> int:
    """1 (and why) when more of the listed samples could not be read than --max-skipped-fraction allows."""
    if differ:
        print(f"{len(differ)} shard(s) not as index.json lists them, {skipped} of {listed} listed samples not "
              f"scored (the reasons are in Ray's logs): {', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}")
    if skipped > a.max_skipped_fraction * listed:
        print(f"evaluate.py: failed: {skipped} of {listed} listed samples could not be read "
              f"({skipped / listed:.1%}), above --max-skipped-fraction {a.max_skipped_fraction}", file=sys.stderr)
        return 1
    return 0
