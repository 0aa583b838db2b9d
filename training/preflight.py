"""What training checks before Ray starts, so that a wrong input is one line naming the setting or file
instead of a failure inside a Train worker after every retry, or a run that trains on nothing:

- `model.name` is a registered architecture;
- the training and validation shards have an index, every shard it lists is there with its listed
  size, and no url leaves the shard folder (checked when the index loads);
- both shard sets have the classes of `model.num_classes`, with the same names in the same order
  (an image-folder val tree missing one class folder would shift every label by one);
- `data.color_pca`'s eigen-decomposition and `data.normalize: mean_pixel`'s mean (`color_pca.json`) are
  beside the training shards;
- the model builds from `model.*` (options, mode, branch, heads), `optim.trainable_from` names a stage
  of it, and `model.pretrained` and `model.init_from` fit it (built on the meta device: no memory, no
  time);
- a video network trains on video shards and an image network on image shards, and a video network's
  `input_size` is the clip crop (`data.size`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.cluster_shape import ClusterShape, RequestDoesNotFit
from common.shared_paths import SharedPathError, check_local_paths
from pipelines.online.catalog import Catalog, first_different_class
from training.config import ConfigError, TrainConfig

PREFLIGHT_KEYS = ("model.", "data.train_shards", "data.val_shards", "optim.trainable_from")  # prefixes it reads


@dataclass(frozen=True)
class TrainingInputs:
    """What the checks of the training inputs have for the console."""
    pretrained: str | None  # what `model.pretrained` loads, if set
    without_samples: str | None  # a warning naming the classes the training shards hold no sample of


def check_training_inputs(cfg: TrainConfig) -> TrainingInputs:
    """A ConfigError naming the setting, if any check fails; else their lines for the console."""
    from training.models import list_models

    if cfg.model.name not in list_models():
        raise ConfigError(f"config key 'model.name': unknown model {cfg.model.name!r}; known: "
                          f"{', '.join(list_models())}")
    train = load_catalog("data.train_shards", cfg.data.train_shards)
    val = load_catalog("data.val_shards", cfg.data.val_shards)
    for key, catalog in (("data.train_shards", train), ("data.val_shards", val)):
        check_shard_files(key, catalog)
        if catalog.num_classes != cfg.model.num_classes:
            raise ConfigError(f"config key 'model.num_classes' is {cfg.model.num_classes} but {key} has "
                              f"{catalog.num_classes} classes ({catalog.loc.uri('index.json')})")
    check_same_classes(train, val)
    check_attributes(cfg.model.num_attributes, train, val)
    readers = [(key, otherwise) for key, otherwise, on in (
        ("data.color_pca", "set data.color_pca: false", cfg.data.color_pca),
        ("data.normalize", "give data.mean_pixel, or data.normalize: imagenet",
         cfg.data.normalize == "mean_pixel" and cfg.data.mean_pixel is None)) if on]
    if readers:
        check_color_pca(cfg.data.train_shards, readers)
    if (train.video is None) != (val.video is None):
        raise ConfigError(f"data.val_shards: {val.loc.uri()} holds {'videos' if val.video else 'images'} and the "
                          f"training shards {'videos' if train.video else 'images'}")
    if train.multi_label and cfg.data.ingest == "ray_data":
        raise ConfigError(f"config key 'data.ingest': {train.loc.uri()} is multi-label (samples with several "
                          f"classes); its targets are made by the training worker's own loader (data.ingest: loader)")
    return TrainingInputs(check_model_start(cfg, video=train.video is not None), classes_without_samples(train))


def classes_without_samples(catalog: Catalog) -> str | None:
    """A warning naming the classes the training shards hold no sample of (single-label shards), or None:
    the model is trained to predict them and never sees one."""
    if catalog.multi_label:  # a class may live only in other classes' samples' label sets
        return None
    counts = {c: sum(s.nsamples for s in catalog.by_class.get(c, [])) for c in range(catalog.num_classes)}
    empty = [catalog.class_names[c] if catalog.class_names else str(c) for c, n in counts.items() if n == 0]
    if not empty:
        return None
    return (f"warning: data.train_shards has no sample of {len(empty)} of its {catalog.num_classes} classes: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; the model will never see them")


def check_color_pca(shards: str, readers: list[tuple[str, str]]) -> None:
    """The settings in `readers` ((key, what else the user can do) pairs) read TRAIN_SHARDS/color_pca.json
    (the colour noise in every Train worker, the mean pixel when the run starts): there, and readable."""
    from pipelines.online import pca_noise

    keys = f"config key '{readers[0][0]}'" + "".join(f" (and '{key}')" for key, _ in readers[1:])
    try:
        pca_noise.check(shards)
    except FileNotFoundError as exc:
        raise ConfigError(f"{keys}: {exc} (or {'; or '.join(otherwise for _, otherwise in readers)})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{keys}: {shards}/{pca_noise.PCA_FILE} is not what pipelines/color_pca.py writes "
                          f"({type(exc).__name__}: {exc}): run it again") from None


def check_model_start(cfg: TrainConfig, video: bool = False) -> str | None:
    import torch

    from training.models import create_model
    from training.models.freezing import stage_choices
    from training.pretrained import match
    from training.published import ModelFileError

    m = cfg.model
    try:
        with torch.device("meta"):
            model = create_model(m.name, m.num_classes, mode=m.mode, branch=m.branch, aux_head=m.aux_head,
                                 aux_weight=m.aux_weight, overlap=m.overlap, num_attributes=m.num_attributes,
                                 attribute_weight=m.attribute_weight, scene_weight=m.scene_weight, **m.options)
    except (TypeError, ValueError, KeyError) as exc:
        reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # no repr quotes
        reason = reason if len(reason) <= 200 else reason[:200] + "..."  # 'abc' * 96 reads badly in full
        raise ConfigError(f"config section 'model': {m.name} cannot be built from it: {reason}") from None
    check_media(cfg, model, video)
    stages = stage_choices(model)
    if cfg.optim.trainable_from and cfg.optim.trainable_from not in stages:
        raise ConfigError(f"config key 'optim.trainable_from': {cfg.optim.trainable_from!r} is not a stage of "
                          f"{m.name}; stages: {', '.join(stages)}")
    if m.init_from:
        check_init_from(model, m.init_from)
    if not m.pretrained:
        return None
    try:
        return "model.pretrained: " + match(model.backbone, m.name, m.pretrained, m.options,
                                            m.pretrained_strict).summary
    except ModelFileError as exc:
        raise ConfigError(str(exc)) from None


def check_media(cfg: TrainConfig, model, video: bool) -> None:
    """Video networks (training/models/video.py name the frames they take) on video shards, read by the
    training worker's own loader, with crops of the size the network was built for."""
    m, d = cfg.model, cfg.data
    offsets = getattr(model.backbone, "clip_offsets", None)
    if offsets is None:
        if video:
            raise ConfigError(f"config key 'model.name': {m.name} is an image network and data.train_shards holds "
                              f"videos; video networks: video_single_frame, video_early_fusion, video_late_fusion, "
                              f"video_slow_fusion (and their _multires variants)")
        if d.clip_region is not None or d.clip_views != "centre":
            key = "data.clip_region" if d.clip_region is not None else "data.clip_views"
            raise ConfigError(f"config key '{key}' shapes video clips and {m.name} is an image network")
        return
    if not video:
        raise ConfigError(f"config key 'model.name': {m.name} is a video network (clips of {len(offsets)} frames) "
                          f"and data.train_shards holds images: shard videos with pipelines/shard.py --video")
    if d.decode != "workers":
        raise ConfigError("config key 'data.decode': video clips are decoded on CPUs, by the worker's loader "
                          "or Ray Data's tasks (data.decode: workers)")
    if d.size != model.backbone.input_size:
        raise ConfigError(f"config key 'data.size' is {d.size} but {m.name} is built for {model.backbone.input_size}"
                          f"x{model.backbone.input_size} clips: set model.options.input_size to {d.size} (or "
                          f"data.size to {model.backbone.input_size})")


def check_init_from(model, uri: str) -> None:
    """VGG's trick, tried on the meta device: the shallower checkpoint loads and its layers fit `model`."""
    import torch

    from training.checkpoint import contents
    from training.config import from_dict
    from training.models import init_from_shallower
    from training.models import build_model

    try:
        state = contents.load(uri)
        shallow_cfg = from_dict(state["config"])
    except OSError as exc:
        raise ConfigError(f"config key 'model.init_from': cannot read {uri} ({exc})") from None
    except Exception as exc:  # torch raises a different type for every way a file is not a checkpoint
        raise ConfigError(f"config key 'model.init_from': {uri} is not a checkpoint written by training/run.py "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        with torch.device("meta"):
            shallow = build_model(shallow_cfg)
        init_from_shallower(model.backbone, shallow.backbone)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"config key 'model.init_from': {uri} does not fit {type(model.backbone).__name__}: "
                          f"{exc}") from None


def load_catalog(key: str, uri: str) -> Catalog:
    try:
        return Catalog.load(uri)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None


def check_same_classes(train: Catalog, val: Catalog) -> None:
    """Same class count, and the same names in the same order where both indexes name them."""
    if train.num_classes != val.num_classes:
        raise ConfigError(f"data.val_shards has {val.num_classes} classes, the training shards {train.num_classes}: "
                          f"labels would not mean the same classes")
    i = first_different_class(train.class_names, val.class_names)
    if i is not None:
        raise ConfigError(f"data.val_shards: class {i} is {val.class_names[i]!r} there but {train.class_names[i]!r} "
                          f"in the training shards: shard both with the same categories (names and order)")


def check_attributes(num_attributes: int, train: Catalog, val: Catalog) -> None:
    """With `model.num_attributes`, both shard sets carry that many attributes, the same in the same order."""
    if not num_attributes:
        return
    for key, catalog in (("data.train_shards", train), ("data.val_shards", val)):
        if len(catalog.attribute_names) != num_attributes:
            raise ConfigError(f"config key 'model.num_attributes' is {num_attributes} but {key} has "
                              f"{len(catalog.attribute_names)} attributes ({catalog.loc.uri('index.json')}); "
                              f"shard with --attributes FILE")
    i = first_different_class(train.attribute_names, val.attribute_names)
    if i is not None:
        raise ConfigError(f"data.val_shards: attribute {i} is {val.attribute_names[i]!r} there but "
                          f"{train.attribute_names[i]!r} in the training shards")


def check_shard_files(key: str, catalog: Catalog) -> None:
    try:
        catalog.check_shards()
    except ValueError as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None


def worker_resources(cfg: TrainConfig) -> dict:
    """What each Train worker reserves besides its GPU.  `run.worker_resource` keeps workers on the nodes
    offering it (a token amount: it says where, not how many), e.g. off the data nodes of a cluster."""
    r = cfg.run
    return {"CPU": r.cpus_per_worker, **({r.worker_resource: 0.001} if r.worker_resource else {})}


def check_cluster_fits(cfg: TrainConfig, shape: ClusterShape) -> None:
    """The run's Train workers (all of them: the gang starts together, or `run.min_workers` of an elastic
    run) and, with `data.ingest: ray_data`, one decode task fit the cluster at its largest; otherwise the
    run would wait for resources that never come."""
    r, d = cfg.run, cfg.data
    bundle = {**worker_resources(cfg), **({"GPU": 1} if r.gpu else {})}
    keys = "'run.workers', 'run.cpus_per_worker'" + (", 'run.gpu'" if r.gpu else "") + (
        ", 'run.worker_resource'" if r.worker_resource else "")
    try:
        shape.check_fits(f"config keys {keys}: {r.min_workers or r.workers} Train worker(s)", bundle,
                         r.min_workers or r.workers)
        if d.ingest == "ray_data":
            task = {"CPU": d.ingest_cpus, **({d.ingest_resource: d.ingest_cpus} if d.ingest_resource else {})}
            shape.check_fits("config keys 'data.ingest_cpus', 'data.ingest_resource': a decode task", task)
    except RequestDoesNotFit as exc:
        raise ConfigError(str(exc)) from None


def check_paths_reach_every_node(cfg: TrainConfig, shape: ClusterShape) -> None:
    """On a Ray cluster that has or can have more than one node, a local path means a different folder on
    each node: checkpoints written where the driver never looks, shards a worker cannot find.  Refused,
    unless `run.shared_filesystem` says every node mounts them, which is then verified on every node
    alive now (and by each Train worker where it starts: `SharedMarker`)."""
    local = [(key, path) for key, path in (
        ("run.storage_path", cfg.run.storage_path), ("data.train_shards", cfg.data.train_shards),
        ("data.val_shards", cfg.data.val_shards), ("model.pretrained", cfg.model.pretrained),
        ("model.init_from", cfg.model.init_from)) if path and "://" not in path]
    inputs = [os.path.join(path, "index.json") if key.startswith("data.") else path
              for key, path in local if key != "run.storage_path"]
    try:
        check_local_paths(shape, [(f"config key '{key}'", path) for key, path in local], cfg.run.shared_filesystem,
                          "--set run.shared_filesystem=true", cfg.run.storage_path, inputs)
    except SharedPathError as exc:
        raise ConfigError(str(exc)) from None


def check_ingest_room(cfg: TrainConfig) -> None:
    """`data.ingest: ray_data` decodes in Ray tasks, which need CPUs the Train workers leave free (else they
    never schedule and training waits forever) and, with `data.ingest_resource`, nodes that offer it.
    Checked on a Ray this process started; a cluster may still be scaling up to what the run asks for."""
    import ray

    from common.console import started_ray_here

    d, r = cfg.data, cfg.run
    if d.ingest != "ray_data" or not started_ray_here():
        return
    have = ray.cluster_resources()
    if d.ingest_resource and have.get(d.ingest_resource, 0) < d.ingest_cpus:
        raise ConfigError(f"config key 'data.ingest_resource': no node of this Ray offers {d.ingest_cpus:g} "
                          f"'{d.ingest_resource}' (nodes declare it: ray start --resources, or cluster.yaml)")
    free = have.get("CPU", 0) - r.workers * r.cpus_per_worker
    if free < d.ingest_cpus:
        raise ConfigError(f"config key 'data.ingest': ray_data decodes in Ray tasks of data.ingest_cpus = "
                          f"{d.ingest_cpus:g} CPU, and the {r.workers} Train workers take {r.workers * r.cpus_per_worker:g} "
                          f"of this Ray's {have.get('CPU', 0):g} CPUs (run.workers x run.cpus_per_worker): lower "
                          f"run.cpus_per_worker (e.g. --set run.cpus_per_worker=0.5) or data.ingest_cpus")

