"""Batch inference over sharded images with Ray Data: read the shards, cut each protocol's views on CPU
tasks, score them with one or more models on an actor pool (GPUs when asked).

    shard urls --read_shards--> samples --cut_views--> uint8 views --Predictor--> class log posteriors
                                                                                 (and attribute probabilities)

A model's posteriors are averaged over the protocol's views in log space (`training/topk.py`), so
rankings past the first class are never float32 ties.  Video shards go the same way with `clips` (one
`ClipTransform` per model: networks take different frames): each video's test clips, scored per clip
(`clip_log_probs`) and averaged per video (`log_probs`).

A damaged shard or an image that does not decode never ends the run: what could not be scored is
counted per shard against index.json (`losses`), as training counts what it skips.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections import Counter
from typing import Iterator

import numpy as np
import torch

from common.storage import Location
from pipelines.offline.attributes import decode as decode_attributes
from pipelines.online.catalog import READ_ERRORS, Catalog
from pipelines.online.clips import ClipTransform
from pipelines.online.tar_stream import ShardReader
from pipelines.online.transforms import BatchNormalize, EvalTransform
from training.topk import log_mean_exp

log = logging.getLogger(__name__)


def view_transforms(protocol: str, scales: tuple[int, ...], size: int) -> list[EvalTransform]:
    """dense: the whole image at each scale Q; multi_crop_dense: VGG's multi-crop views, then the dense
    ones; the others: one transform giving every view."""
    dense = [EvalTransform("full", size=size, scales=(q,)) for q in scales]
    if protocol == "dense":
        return dense
    if protocol == "multi_crop_dense":
        return [EvalTransform("multi_crop", size=size, scales=scales), *dense]
    return [EvalTransform(protocol, size=size, resize=scales[0], scales=scales)]


def read_shards(batch: dict[str, np.ndarray], loc: Location, rows: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data read stage: each shard's samples, with the tar reader training uses.  A damaged shard gives
    every whole sample before the damage, then its rest is skipped (the driver counts what each shard
    lacks against index.json), as in training: one bad shard does not end the evaluation."""
    for url in batch["url"]:
        reader, got = None, []
        try:
            reader = ShardReader(loc, str(url))
            while (sample := reader.next()) is not None:
                if "cls" in sample.members and ("jpg" in sample.members or "mp4" in sample.members):
                    got.append(sample)
                if len(got) == rows:
                    yield _sample_columns(got, str(url))
                    got = []
        except READ_ERRORS as exc:
            log.warning("evaluation skips the rest of shard %s: %s: %s", loc.uri(str(url)), type(exc).__name__, exc)
        finally:
            if reader is not None:
                reader.close()
        if got:
            yield _sample_columns(got, str(url))


def _sample_columns(samples: list, url: str) -> dict[str, np.ndarray]:
    return {"__key__": np.array([s.key for s in samples], dtype=object),
            "url": np.array([url] * len(samples), dtype=object),
            **{ext: np.array([s.members.get(ext, b"{}") for s in samples], dtype=object)
               for ext in ("cls", "jpg", "mp4", "json")},
            **{ext: np.array([s.members.get(ext, b"") for s in samples], dtype=object) for ext in ("attr", "labels")}}


@functools.lru_cache(maxsize=1)
def blank_jpeg() -> bytes:
    """Stands in for an image that does not decode, so its batch keeps its shape."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    return buf.getvalue()


def unique_clips(clips: list[ClipTransform]) -> tuple[list[ClipTransform], list[int]]:
    """The distinct clip transforms, and each model's index among them (models taking the same frames
    share their views)."""
    distinct = list(dict.fromkeys(clips))
    return distinct, [distinct.index(c) for c in clips]


def _blank_clip_views(t: ClipTransform) -> np.ndarray:
    return np.zeros((t.clips * t.views_per_clip, 3, len(t.offsets), t.size, t.size), np.uint8)


def cut_views(batch: dict[str, np.ndarray], protocol: str, scales: tuple[int, ...], size: int,
              attributes: int = 0, clips: list[ClipTransform] | None = None) -> dict:
    """Ray Data CPU stage: decode and cut each image's views (uint8), so the model stage only infers.
    `views{i}`: transform i's (V, C, H, W) per image; dense images differ in size, so a ragged column;
    with `clips`, distinct clip transform i's (V, C, T, S, S) per video.
    A sample that does not decode gets a blank image's views and `ok` False: the driver drops it and
    counts it as its shard's loss (a batch keeps its shape, whatever fails in it).  With `attributes`,
    `attr` holds each image's attribute bits (MISSING where it has none)."""
    if clips:
        transforms = unique_clips(clips)[0]
        cut_one = lambda jpeg, mp4, meta: [t.views(mp4, json.loads(meta)).numpy() for t in transforms]  # noqa: E731
        blank = lambda: [_blank_clip_views(t) for t in transforms]  # noqa: E731
    else:
        transforms = view_transforms(protocol, scales, size)
        cut_one = lambda jpeg, mp4, meta: [t.views(jpeg).numpy() for t in transforms]  # noqa: E731
        blank = lambda: [t.views(blank_jpeg()).numpy() for t in transforms]  # noqa: E731
    ok, cut, labels, sources, bits, several = [], [], [], [], [], []
    absent = [b""] * len(batch["__key__"])  # images have no mp4 column, videos no jpg
    for key, url, jpeg, mp4, cls, meta, attr, classes in zip(
            batch["__key__"], batch["url"], batch.get("jpg", absent), batch.get("mp4", absent), batch["cls"],
            batch["json"], batch["attr"], batch["labels"]):
        try:
            # the image id: the path as listed when sharding (shard.py always records it), else the key
            row = (True, int(bytes(cls)), str(json.loads(bytes(meta)).get("source", key)),
                   cut_one(bytes(jpeg), bytes(mp4), bytes(meta)), _bits(bytes(attr), attributes),
                   bytes(classes).decode())
        except Exception as exc:  # a decoder error on one odd sample must not end the evaluation
            log.warning("evaluation skips sample %s of %s: %s: %s", key, url, type(exc).__name__, exc)
            row = (False, -1, str(key), blank(), _bits(b"", attributes), "")
        for column, value in zip((ok, labels, sources, cut, bits, several), row):
            column.append(value)
    out = {"key": batch["__key__"], "url": batch["url"], "ok": np.array(ok, dtype=bool),
           "cls": np.array(labels, dtype=np.int64), "source": np.array(sources, dtype=object),
           "labels": np.array(several, dtype=object),  # a multi-label sample's classes ("2,7"), else ""
           "attr": np.stack(bits).astype(np.int8).reshape(len(ok), attributes)}
    for i, transform in enumerate(transforms):
        views = [c[i] for c in cut]
        if getattr(transform, "protocol", None) == "full":
            column = np.empty(len(views), dtype=object)
            for row, v in enumerate(views):
                column[row] = v
            out[f"views{i}"] = column
        else:
            out[f"views{i}"] = np.stack(views)
    return out


def _bits(member: bytes, attributes: int) -> np.ndarray:
    """The sample's attribute bits when they are scored (shards sharded with attributes, a model with an
    attribute head), else none."""
    return decode_attributes(member, attributes) if attributes else np.zeros(0, np.int8)


class Predictor:
    """Ray Data actor: every model's class log posteriors per image, averaged over the protocol's views;
    fixed-size views go through each model as one batch.  Models with an attribute head also give
    attribute probabilities (sigmoid, averaged over the same views), averaged over those models.
    Videos (`clips`): every model's log posteriors per clip (its views averaged) and per video.
    `checkpoints`: files of training, or published model files (`arch`: the network of those that
    do not name it)."""

    def __init__(self, checkpoints: list[str], protocol: str, scales: tuple[int, ...], use_gpu: bool,
                 batch_size: int, clips: list[ClipTransform] | None = None, arch: str | None = None):
        from training.checkpoint.contents import inference_weights
        from training.config import from_dict
        from training.models import build_model
        from training.normalization import mean_std
        from training.pretrained import scoring_state

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.models, self.normalizers = [], []  # each model's pixels as it was trained on them
        for i, path in enumerate(checkpoints):
            state = scoring_state(path, arch)
            cfg = from_dict(state["config"])
            model = build_model(cfg)
            model.load_state_dict(inference_weights(state))
            self.models.append(model.to(self.device).eval())
            self.normalizers.append(clips[i].normalizer() if clips else BatchNormalize(**mean_std(cfg.data)))
        self.protocol, self.scales, self.batch_size, self.clips = protocol, scales, batch_size, clips
        self.columns = unique_clips(clips)[1] if clips else []

    def clip_log_probs(self, i: int, batch: dict) -> torch.Tensor:
        """(B, clips, K): model i's class log posteriors per test clip, over the clip's views."""
        views = torch.from_numpy(np.asarray(batch[f"views{self.columns[i]}"]))  # (B, V, C, T, S, S)
        chunk = self.batch_size if self.device.type == "cuda" else views.shape[1]
        outs = [self.models[i].predict(self.normalizers[i](part.to(self.device)))[0].float().log_softmax(1)
                for part in views.flatten(0, 1).split(chunk)]
        per_view = torch.cat(outs).view(len(views), self.clips[i].clips, self.clips[i].views_per_clip, -1)
        return log_mean_exp(per_view, 2)

    def log_probs(self, i: int, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K) class log posteriors and (B, A) attribute probabilities (None without an attribute head)
        for model i; multi_crop_dense: the mean of the two protocols' posteriors (VGG)."""
        model, normalize = self.models[i], self.normalizers[i]
        if self.protocol == "dense":
            return self.dense_log_probs(i, batch, first=0)
        views = torch.from_numpy(np.asarray(batch["views0"]))  # (B, V, C, H, W)
        # a GPU takes up to batch_size views per forward; a CPU one image's views (larger batches fall
        # out of its caches: ten crops of 32 images at once ran at 0.6x on 2 cores)
        chunk = self.batch_size if self.device.type == "cuda" else views.shape[1]
        outs = [model.predict(normalize(part.to(self.device))) for part in views.flatten(0, 1).split(chunk)]
        per_view = torch.cat([logits.float().log_softmax(1) for logits, _ in outs]).view(*views.shape[:2], -1)
        crops = log_mean_exp(per_view, 1)
        attributes = None if outs[0][1] is None else \
            torch.cat([a.sigmoid() for _, a in outs]).view(*views.shape[:2], -1).mean(1)
        if self.protocol == "multi_crop_dense":
            dense, dense_attributes = self.dense_log_probs(i, batch, first=1)
            both = log_mean_exp(torch.stack([crops, dense]), 0)
            return both, None if attributes is None else (attributes + dense_attributes) / 2
        return crops, attributes

    def dense_log_probs(self, i: int, batch: dict, first: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K) log posteriors of model i: every scale's whole image (columns views{first}...) and its
        mirror, as class-score maps; attributes from the same passes."""
        model, normalize = self.models[i], self.normalizers[i]
        backbone, rows, attribute_rows = model.backbone, [], []
        for row in range(len(batch["key"])):
            outs, attributes = [], []
            for column in range(first, first + len(self.scales)):
                x = normalize(torch.from_numpy(np.asarray(batch[f"views{column}"][row])).to(self.device))
                features = backbone.forward_features(torch.cat([x, x.flip(-1)]))
                head = backbone.dense_head() if hasattr(backbone.head, "to_dense") else backbone.forward_head
                scores = head(features)
                if scores.dim() == 4:  # VGG: the class-score map is averaged spatially, then the softmax
                    scores = scores.mean((2, 3))
                outs.append(scores.float().log_softmax(1))
                if model.attribute_head is not None:  # global pooling takes any map size
                    attributes.append(model.attribute_head(features).sigmoid())
            rows.append(log_mean_exp(torch.cat(outs), 0))
            attribute_rows.append(torch.cat(attributes).mean(0) if attributes else None)
        return torch.stack(rows), None if model.attribute_head is None else torch.stack(attribute_rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = {k: batch[k] for k in ("key", "url", "ok", "cls", "source", "attr", "labels")}
        if self.clips:
            with torch.no_grad():
                per_clip = torch.stack([self.clip_log_probs(i, batch) for i in range(len(self.models))], 1)
            return {**keep, "log_probs": log_mean_exp(per_clip, 2).cpu().numpy().astype(np.float32),  # (B, M, K)
                    "clip_log_probs": per_clip.cpu().numpy().astype(np.float32),  # (B, M, clips, K)
                    "attr_probs": np.zeros((len(per_clip), 0), np.float32)}
        with torch.no_grad():
            both = [self.log_probs(i, batch) for i in range(len(self.models))]
        log_probs = torch.stack([p for p, _ in both], dim=1)  # (B, M, K)
        attributes = [a for _, a in both if a is not None]
        attr_probs = torch.stack(attributes).mean(0) if attributes else torch.zeros(len(log_probs), 0)
        return {**keep, "log_probs": log_probs.cpu().numpy().astype(np.float32),
                "attr_probs": attr_probs.cpu().numpy().astype(np.float32)}


def predict(checkpoints, shards: str, protocol: str, scales, size: int, workers: int, use_gpu: bool,
            batch_size: int, attributes: int = 0, clips: list[ClipTransform] | None = None,
            arch: str | None = None) -> dict[str, np.ndarray]:
    import ray

    catalog = Catalog.load(shards)
    ds = ray.data.from_items([{"url": s.url} for s in catalog.shards], override_num_blocks=len(catalog.shards))
    ds = ds.map_batches(read_shards, fn_kwargs=dict(loc=catalog.loc), batch_size=1)
    # With GPU actors, decoding runs as CPU tasks beside them and scales out over the cluster's CPUs;
    # on CPUs alone Ray Data fuses the two stages into each actor.
    # a video's views are its clips': batches of fewer videos hold as many tensors as batches of images
    rows = max(1, batch_size // max(c.clips * c.views_per_clip for c in clips)) if clips else batch_size
    ds = ds.map_batches(cut_views, fn_kwargs=dict(protocol=protocol, scales=scales, size=size, attributes=attributes,
                                                  clips=clips), batch_size=rows)
    ds = ds.map_batches(Predictor, fn_constructor_kwargs=dict(checkpoints=checkpoints, protocol=protocol,
                                                              scales=scales, use_gpu=use_gpu,
                                                              batch_size=batch_size, clips=clips, arch=arch),
                        batch_size=rows, compute=ray.data.ActorPoolStrategy(size=workers),
                        num_gpus=1 if use_gpu else 0)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    columns = ("key", "url", "ok", "cls", "labels", "source", "log_probs", "attr", "attr_probs",
               *(("clip_log_probs",) if clips else ()))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in columns}
    order = np.argsort(merged["key"])  # a stable order, whatever Ray's scheduling
    return {k: v[order] for k, v in merged.items()}


def losses(catalog: Catalog, result: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """(listed samples that were not scored, 'url (listed N, read M)' for every shard that differs from
    index.json): what a damaged shard or a stale index cost, as training counts it."""
    read = Counter(result["url"][result["ok"]].tolist())
    skipped, differ = 0, []
    for shard in catalog.shards:
        got = read.get(shard.url, 0)
        skipped += max(0, shard.nsamples - got)
        if got != shard.nsamples:
            differ.append(f"{shard.url} (listed {shard.nsamples}, read {got})")
    return skipped, differ
