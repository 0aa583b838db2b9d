"""What training checks before Ray starts, so that a wrong input is one line naming the setting or file
instead of a failure inside a Train worker after every retry, or a run that trains on nothing:

- `model.name` is a registered architecture;
- the training and validation shards have an index, every shard it lists is there with its listed
  size, and no url leaves the shard folder (checked when the index loads);
- both shard sets have the classes of `model.num_classes`, with the same names in the same order
  (an image-folder val tree missing one class folder would shift every label by one);
- `optim.trainable_from` names a stage of the model, and `model.pretrained` fits it (built on the
  meta device: no memory, no time).
"""

from __future__ import annotations

from pipelines.catalog import Catalog, first_different_class
from training.config import ConfigError, TrainConfig

PREFLIGHT_KEYS = ("model.name", "model.num_classes", "data.train_shards", "data.val_shards",  # what it reads
                  "model.pretrained", "optim.trainable_from")


def check_training_inputs(cfg: TrainConfig) -> None:
    """A ConfigError naming the setting, if any check fails."""
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
    check_model_start(cfg)


def check_model_start(cfg: TrainConfig) -> None:
    import torch

    from training.freezing import stage_choices
    from training.models import create_model
    from training.pretrained import PretrainedError, match

    m = cfg.model
    if not (m.pretrained or cfg.optim.trainable_from):
        return
    try:
        with torch.device("meta"):
            model = create_model(m.name, m.num_classes, mode=m.mode, branch=m.branch, aux_head=m.aux_head,
                                 aux_weight=m.aux_weight, overlap=m.overlap, **m.options)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"config section 'model': {exc}") from None
    stages = stage_choices(model)
    if cfg.optim.trainable_from and cfg.optim.trainable_from not in stages:
        raise ConfigError(f"config key 'optim.trainable_from': {cfg.optim.trainable_from!r} is not a stage of "
                          f"{m.name}; stages: {', '.join(stages)}")
    if m.pretrained:
        try:
            match(model.backbone, m.name, m.pretrained, m.options, m.pretrained_strict)
        except PretrainedError as exc:
            raise ConfigError(str(exc)) from None


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


def check_shard_files(key: str, catalog: Catalog) -> None:
    try:
        catalog.check_shards()
    except ValueError as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None
