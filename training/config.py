"""Typed training configuration, loaded from YAML, with `--set section.key=value` overrides.

Unknown keys are refused with their dotted name, so a typo never silently trains the default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from common.settings_file import SettingsFileError, parse_assignment, read_mapping


@dataclass
class DataConfig:
    train_shards: str = "data/demo/shards/train"  # folder or URI written by pipelines/shard.py
    val_shards: str = "data/demo/shards/val"  # the validation split's shards, scored after every epoch
    sampling: str = "class-aware"  # class-aware (WM: a class, then one of its images) | uniform
    batch_size: int = 64  # per worker
    read_block: int = 1  # uniform: samples per range read; on object stores 4 (with shuffle_buffer 4000)
    shuffle_buffer: int = 1000  # uniform: samples each loader worker mixes (see pipelines/online/epoch_order.py)
    loader_workers: int = 1  # DataLoader processes per training worker
    crop: str = "rrc"  # rrc (random resized crops) | scale_jitter (a shorter side in jitter) | random_crop
    size: int = 224  # the crop the network takes, in pixels
    jitter: tuple[int, int] = (256, 512)  # scale_jitter: the range a training image's shorter side is drawn in
    flip: bool = True  # random horizontal flips (videos: and mirrored test clips); off when a mirror changes the class
    color_pca: bool = False  # AlexNet's colour noise from TRAIN_SHARDS/color_pca.json
    color_pca_scale: str = "eigenvalue"  # eigenvalue: the paper's alpha*lambda on [0, 1] pixels | spread: sqrt(lambda)
    normalize: str = "imagenet"  # imagenet: ImageNet's mean and std | mean_pixel: the papers' mean pixel off 0-255
    mean_pixel: tuple[float, float, float] | None = None  # mean_pixel's RGB mean in [0, 1]; None: color_pca.json's
    eval_resize: int = 256  # validation: the shorter side before the centre crop of `size`
    eval_clips: int = 20  # video shards: clips per validation video (Karpathy et al.: 20)
    clip_views: str = "centre"  # video tests per clip: centre (crop and mirror) | four (Karpathy et al.'s 4 views)
    clip_region: int | None = None  # videos: crop from the frames' centre square resized to this (200); None: as stored
    decode: str = "workers"  # "device": nvJPEG on the GPU; "hybrid": the workers as many as they can, the GPU the rest
    ingest: str = "loader"  # DataLoader processes in each worker, or "ray_data" (pipelines/online/ingest_pipeline.py)
    ingest_cpus: float = 1.0  # ray_data: CPUs per decode task
    ingest_resource: str | None = None  # ray_data: a node resource decode tasks take as many of as CPUs (cluster.yaml)
    ingest_chunk: int = 128  # ray_data: samples per decode task
    ingest_prefetch: int = 2  # ray_data: batches each training worker keeps ready
    max_skipped_fraction: float = 0.01  # an epoch that had to skip more of its samples fails the run


@dataclass
class ModelConfig:
    name: str = "simple_net"  # the architecture (training/models/registry.py)
    num_classes: int = 10  # the shards' classes (365 for Places365)
    mode: str | None = None  # bp | loss12_bp | relay; None: the family's default
    branch: str | None = None  # relay / loss12_bp: the stage the auxiliary head hangs from; None: the family's
    aux_head: str | None = None  # copy (the layers above the branch, WM A/B) | small (GoogLeNet's); None: the family's
    aux_weight: float | None = None  # the auxiliary loss's weight; None: the family's
    overlap: int = 1  # relay: stages below the branch that the top loss trains too
    options: dict[str, Any] = field(default_factory=dict)  # builder options: input_size, width, fc, ...
    init_from: str | None = None  # checkpoint of a shallower VGG to start from (VGG's trick)
    pretrained: str | None = None  # torchvision state_dict file or checkpoint to start from (training/pretrained.py)
    pretrained_strict: bool = True  # False: load the tensors that fit, warn about the rest
    num_attributes: int = 0  # > 0: a multi-label attribute head on the shards' `attr` bits (their attribute_names)
    attribute_weight: float = 1.0  # the attribute loss's weight in the total
    scene_weight: float = 1.0  # the scene losses' weight; 0 with attributes: attributes alone


@dataclass
class OptimConfig:
    lr: float = 0.01  # the learning rate at batch_size x workers
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 penalty
    decay_norm_and_bias: bool = True  # False: no weight decay on norm weights and biases
    schedule: str = "plateau"  # plateau (divide when val accuracy stalls) | multistep | cosine
    factor: float = 0.1  # plateau / multistep: the learning rate is multiplied by this at each drop
    patience: int = 2  # plateau: epochs without improvement before a drop
    milestones: tuple[int, ...] = ()  # multistep: the epochs the learning rate drops at
    warmup_epochs: int = 0  # linear warm-up of the learning rate over this many epochs
    label_smoothing: float = 0.0  # the cross-entropy's label smoothing
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights; validate and export it
    trainable_from: str | None = None  # freeze the backbone stages below this one ("head": a linear probe)
    head_lr_mult: float = 1.0  # learning rate multiplier of the new layers: classifier and auxiliary heads


@dataclass
class RunSettings:
    epochs: int = 10  # epochs to train
    seed: int = 0  # seeds the weights, the input stream's order and the augmentation
    workers: int = 2  # Ray Train workers (DDP ranks)
    gpu: bool = False  # one GPU per worker (NCCL); False: CPU workers (gloo)
    cpus_per_worker: float = 1.0  # CPUs each Train worker reserves (leave some for Ray Data)
    worker_resource: str | None = None  # a node resource (cluster.yaml: gpu_node) that places workers on its nodes
    min_workers: int | None = None  # elastic range, when set
    storage_path: str = "runs"  # where runs are written: a local folder, a shared filesystem or s3://
    name: str | None = None  # None: a fresh unique name
    max_failures: int = 2  # worker-group restarts from the latest checkpoint; -1: without limit
    num_to_keep: int = 2  # checkpoints kept (the best by validation top-1 error)
    amp: bool = True  # autocast on GPU
    amp_dtype: str = "bfloat16"  # or "float16" (GPUs without bf16), with a dynamic loss scaler
    channels_last: bool = True  # on GPU
    cudnn_benchmark: bool = True  # on GPU: cuDNN times kernels once for the fixed crop (torchvision's reference)
    compile: bool = False  # torch.compile the model
    progress_every_s: float = 60.0  # rank 0's in-epoch console line; 0: after every step
    checkpoint_every_steps: int = 0  # > 0: also checkpoint inside an epoch, every this many steps
    checkpoint_every_s: float = 0.0  # > 0: also checkpoint inside an epoch, every this many seconds
    shared_filesystem: bool = False  # local paths are on a filesystem every node mounts (NFS, EFS, FSx...)

    def __post_init__(self):
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"run.amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)


class ConfigError(ValueError):
    pass


def load(path: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    raw: dict = {}
    if path:
        try:
            raw = read_mapping(path, "a mapping of sections (data, model, optim, run)")
        except SettingsFileError as exc:
            raise ConfigError(str(exc)) from None
    return with_overrides(raw, overrides, note=True)


def with_overrides(raw: dict, overrides: list[str] = (), note: bool = False) -> TrainConfig:
    """`raw` (a config mapping, left unchanged) with `key=value` overrides applied, type-checked; `note`:
    an old key's note on stderr."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        try:
            key, value = parse_assignment(item)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        *parents, leaf = key.split(".")
        node = raw
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{'.'.join(parents[:depth + 1])}' is not a section")
        node[leaf] = value
    return check(_build(TrainConfig, _renamed(raw, note), ""))


OLD_KEYS = {("run", "use_gpu"): "gpu"}  # accepted for one release, with a note


def _renamed(raw: dict, note: bool) -> dict:
    """`raw` with each old key under its new name (a saved run's or checkpoint's config: silently)."""
    for (section, old), new in OLD_KEYS.items():
        node = raw.get(section)
        if not isinstance(node, dict) or old not in node:
            continue
        if new in node:
            raise ConfigError(f"config keys '{section}.{old}' and '{section}.{new}' are one setting: give "
                              f"'{section}.{new}' alone")
        node[new] = node.pop(old)
        if note:
            print(f"note: config key '{section}.{old}' is now '{section}.{new}'; the old spelling goes in the next "
                  f"release", file=sys.stderr)
    return raw


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: TrainConfig) -> str:
    """A training YAML that `training/run.py --config` takes (tuples as lists)."""
    import json

    return yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False)


RUN_CONFIG_FILE = "config.yaml"  # in a run's folder: the config it started with, what --resume continues


def absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute: Ray Train workers run in a run folder of their own."""
    cfg.data.train_shards, cfg.data.val_shards = absolute(cfg.data.train_shards), absolute(cfg.data.val_shards)
    if cfg.model.init_from:
        cfg.model.init_from = absolute(cfg.model.init_from)
    if cfg.model.pretrained:
        cfg.model.pretrained = absolute(cfg.model.pretrained)
    cfg.run.storage_path = absolute(cfg.run.storage_path)
    return cfg


def run_folder(storage_path: str, name: str) -> str:
    """Where run (or Tune experiment) `name` lives: Ray Train's `RunConfig(storage_path, name)` folder."""
    return f"{storage_path.rstrip('/')}/{name}"


def save_run_config(run_path: str, cfg: TrainConfig) -> str:
    from common.storage import Location

    return Location.write_atomic_uri(f"{run_path.rstrip('/')}/{RUN_CONFIG_FILE}", to_yaml(cfg).encode())


def saved_run_config(run_path: str) -> dict | None:
    """The config mapping a run saved when it started, or None (a run folder without one)."""
    from common.storage import Location

    folder = Location.parse(run_path)
    if not folder.exists(RUN_CONFIG_FILE):
        return None
    return yaml.safe_load(folder.read_bytes(RUN_CONFIG_FILE))


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The dotted keys whose values differ between two configs."""
    flat_a, flat_b = (_flatten(to_dict(c)) for c in (a, b))
    return [k for k in flat_a if flat_a[k] != flat_b.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_dict(data: dict) -> TrainConfig:
    return check(_build(TrainConfig, _renamed(copy.deepcopy(data), note=False), ""))


def _at_least(low):
    return lambda v: v >= low, f">= {low}"


def _within(low, high):  # [low, high)
    return lambda v: low <= v < high, f"in [{low}, {high})"


def _one_of(*options):
    return lambda v: v in options, "one of " + ", ".join(map(str, options))


# Ranges a value of the right type must also be in: a batch of -1 or 0 epochs would otherwise hang or fail
# inside a Train worker after every retry.  Names are checked against the model registry at run time.
RANGES = {
    "data.sampling": _one_of("class-aware", "uniform"), "data.batch_size": _at_least(1),
    "data.read_block": _at_least(1), "data.shuffle_buffer": _at_least(1),
    "data.loader_workers": _at_least(0), "data.crop": _one_of("rrc", "scale_jitter", "random_crop"),
    "data.size": _at_least(1), "data.eval_resize": _at_least(1), "data.eval_clips": _at_least(1),
    "data.clip_views": _one_of("centre", "four"), "data.clip_region": (lambda v: v is None or v >= 1, ">= 1"),
    "data.decode": _one_of("workers", "device", "hybrid"), "data.normalize": _one_of("imagenet", "mean_pixel"),
    "data.color_pca_scale": _one_of("eigenvalue", "spread"),
    "data.ingest": _one_of("loader", "ray_data"), "data.ingest_cpus": (lambda v: v > 0, "> 0"),
    "data.ingest_chunk": _at_least(1), "data.ingest_prefetch": _at_least(0),
    "data.max_skipped_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "model.num_classes": _at_least(2), "model.mode": _one_of(None, "bp", "loss12_bp", "relay"),
    "model.overlap": _at_least(0), "model.num_attributes": _at_least(0), "model.attribute_weight": _at_least(0),
    "model.scene_weight": _at_least(0),
    "optim.lr": (lambda v: v > 0, "> 0"), "optim.momentum": _within(0, 1), "optim.weight_decay": _at_least(0),
    "optim.schedule": _one_of("plateau", "multistep", "cosine"), "optim.factor": (lambda v: 0 < v < 1, "in (0, 1)"),
    "optim.patience": _at_least(0), "optim.warmup_epochs": _at_least(0), "optim.label_smoothing": _within(0, 1),
    "optim.ema_decay": _within(0, 1), "optim.head_lr_mult": (lambda v: v > 0, "> 0"),
    "run.epochs": _at_least(1), "run.workers": _at_least(1), "run.cpus_per_worker": _at_least(0),
    "run.max_failures": _at_least(-1), "run.num_to_keep": _at_least(1), "run.progress_every_s": _at_least(0),
    "run.checkpoint_every_steps": _at_least(0), "run.checkpoint_every_s": _at_least(0),
}


def check(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, or a ConfigError naming the first setting out of its range."""
    for dotted, (ok, wanted) in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if not ok(value):
            raise ConfigError(f"config key '{dotted}' must be {wanted}, got {value!r}")
    low, high = cfg.data.jitter
    if not 1 <= low <= high:
        raise ConfigError(f"config key 'data.jitter' must be [low, high] with 1 <= low <= high, "
                          f"got {list(cfg.data.jitter)}")
    if cfg.data.mean_pixel is not None and not all(0 <= v <= 1 for v in cfg.data.mean_pixel):
        raise ConfigError(f"config key 'data.mean_pixel' must be three values in [0, 1] (an RGB mean of [0, 1] "
                          f"pixels), got {list(cfg.data.mean_pixel)}")
    if cfg.data.clip_region is not None and cfg.data.clip_region < cfg.data.size:
        raise ConfigError(f"config key 'data.clip_region' ({cfg.data.clip_region}) must be at least data.size "
                          f"({cfg.data.size}): the crops are taken from it")
    milestones = list(cfg.optim.milestones)
    if milestones != sorted(set(milestones)) or any(m < 1 for m in milestones):
        raise ConfigError(f"config key 'optim.milestones' must be increasing epochs >= 1, got {milestones}")
    if cfg.model.scene_weight == 0 and not (cfg.model.num_attributes and cfg.model.attribute_weight):
        raise ConfigError("config key 'model.scene_weight' is 0 and no attribute loss is on "
                          "(model.num_attributes, model.attribute_weight): nothing would be trained")
    if cfg.data.ingest == "ray_data" and cfg.data.decode != "workers":
        raise ConfigError(f"config key 'data.decode': {cfg.data.decode} decoding runs in the training worker's own "
                          "loader; with data.ingest: ray_data the cluster's tasks decode (data.decode: workers)")
    if cfg.data.eval_resize < cfg.data.size:  # a center crop larger than the image: validation on black borders
        raise ConfigError(f"config key 'data.eval_resize' ({cfg.data.eval_resize}) must be >= data.size "
                          f"({cfg.data.size}): validation's center crops would run past the resized image")
    name = cfg.run.name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name):
        raise ConfigError(f"config key 'run.name' must be one folder name (no '/', not '.' or '..'), got {name!r}: "
                          f"runs are written under run.storage_path")
    if cfg.run.min_workers is not None and not 1 <= cfg.run.min_workers <= cfg.run.workers:
        raise ConfigError(f"config key 'run.min_workers' must be in [1, run.workers = {cfg.run.workers}], "
                          f"got {cfg.run.min_workers}")
    return cfg


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known in {prefix.rstrip('.') or 'top level'}: "
                          f"{', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check(value, hint, f"{prefix}{name}")
    return cls(**values)


EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check(value, hint, dotted: str):
    """`value` if it fits the field's type (lists become tuples for tuple fields), else a ConfigError."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        base = get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if base is tuple and isinstance(value, (list, tuple)):
            return _items(value, option, dotted)
        if base is dict and isinstance(value, dict):
            return value
        if base is Any:
            return value
        if base is float and isinstance(value, str) and EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .inf and .nan pass every range check and diverge the run
                raise ConfigError(f"config key '{dotted}' must be a finite number, got {value!r}")
            return value
        if base in (int, str, bool) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    raise ConfigError(f"config key '{dotted}' expects {shown}, got {value!r}")


def _items(value: list | tuple, hint, dotted: str) -> tuple:
    """A tuple field's value, each item checked: `tuple[int, int]` takes two whole numbers, `tuple[int, ...]`
    any number of them."""
    args = get_args(hint)
    if args and args[-1] is not Ellipsis and len(value) != len(args):
        raise ConfigError(f"config key '{dotted}' expects {len(args)} values, got {list(value)!r}")
    for i, v in enumerate(value):
        _check(v, (args[0] if args[-1] is Ellipsis else args[i]) if args else Any, f"{dotted}[{i}]")
    return tuple(value)
