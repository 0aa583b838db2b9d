"""Saved weights read into one of our networks: to start training from (`warm_start`: `model.pretrained`,
and `model.init_from`'s shallower VGG), or to score as they are (`evaluate.py` and `predict.py
--checkpoint` of a file training did not write).  Never downloads: where there is network access,
make a torchvision file with

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet50(
        weights='IMAGENET1K_V2').state_dict(), 'resnet50-imagenet.pt')"

Accepted files (loaded with `weights_only=True`, local or any fsspec URI):
- a `state.pt` written by training/run.py, its checkpoint folder, or a finished run's folder (its
  `report.json` names the best checkpoint): the inference weights;
- the `state_dict` of one of our backbones (`model.export().state_dict()`);
- published files (`training/published.py`): torchvision `state_dict`s of the networks we share with
  torchvision, and the CSAILVision Places365 release's `.pth.tar` files as published.

Strict: any missing, unexpected or mis-shaped tensor is one error listing them all.  The one
exception is the classifier (the backbone's last linear layer): when its class count differs it keeps
its fresh initialisation, as do auxiliary heads, which no file supplies.  `strict=False` loads what
fits, but a file of which no tensor but the classifier fits is an error: it would train from nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.storage import Location
from training.checkpoint import contents
from training.config import from_dict, load, to_dict
from training.models import build_model, create_model, init_from_shallower
from training.published import (TORCHVISION_TWINS, ModelFileError, backbone_tensors, is_batch_counter,
                                our_architecture, unwrap)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    """A file's backbone tensors, the architecture it names (ours; None when it names none) and where
    it is."""

    tensors: dict[str, torch.Tensor]
    arch: str | None
    uri: str


def read_weights(uri: str) -> Weights:
    """The file's backbone tensors: a checkpoint of ours gives its inference weights."""
    loc = contents.locate(uri)
    try:
        state = contents.read_file(loc)
    except ModelFileError as exc:
        raise ModelFileError(f"model.pretrained: {exc}") from None
    if contents.is_ours(state):
        weights = contents.inference_weights(state)
        return Weights({k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")},
                       state["config"].get("model", {}).get("name"), loc.uri())
    try:
        tensors, arch = unwrap(state, loc.uri())
    except ModelFileError as exc:
        raise ModelFileError(f"model.pretrained: {exc}") from None
    return Weights(tensors, arch and our_architecture(arch, loc.uri()), loc.uri())


def classifier_keys(backbone: nn.Module) -> set[str]:
    """The state keys of the backbone's last linear layer (the one whose size is the class count)."""
    last = backbone.classifier()[0]
    return {f"{last}.weight", f"{last}.bias"}


@dataclass(frozen=True)
class Match:
    """What of a file fills a backbone: `usable` tensors under our names, the `fresh` keys that keep
    their initialisation (the classifier when the class count differs), and one line saying so."""

    usable: dict[str, torch.Tensor]
    fresh: list[str]
    summary: str


def match(backbone: nn.Module, name: str, uri: str, options: dict | None = None, strict: bool = True) -> Match:
    """Fit the file at `uri` to `backbone` (architecture `name`): see `fit`."""
    return fit(backbone, name, read_weights(uri), options, strict)


def fit(backbone: nn.Module, name: str, weights: Weights, options: dict | None = None, strict: bool = True,
        setting: str = "model.pretrained") -> Match:
    """What of `weights` fills `backbone`.  Raises ModelFileError (naming `setting`) listing every
    missing, unexpected or mis-shaped tensor (with `strict=False`: logs them, unless no tensor but the
    classifier fits)."""
    if weights.arch and weights.arch != name:
        raise ModelFileError(f"{setting}: {weights.uri} holds a {weights.arch} network, not model.name's "
                             f"{name}: set model.name: {weights.arch}")
    tensors, target = weights.tensors, backbone.state_dict()
    if not set(tensors) & set(target):  # torchvision's names, or another network's
        if name not in TORCHVISION_TWINS:
            raise ModelFileError(f"{setting}: none of the {len(tensors)} tensors of {weights.uri} is named "
                                 f"as {name}'s (e.g. {next(iter(tensors), '-')!r}), and {name} has no torchvision "
                                 f"twin: torchvision weights load into {', '.join(sorted(TORCHVISION_TWINS))}")
        tensors = backbone_tensors(tensors, name, options)
    fresh, classes = [], ""
    classifier = classifier_keys(backbone)
    if all(k in tensors and tensors[k].shape != target[k].shape for k in classifier):
        fresh = sorted(classifier)  # another class count: this layer is new
        weight = next(k for k in classifier if k.endswith(".weight"))
        classes = f"; classifier replaced: {len(tensors[weight])} -> {len(target[weight])} classes"
        tensors = {k: v for k, v in tensors.items() if k not in classifier}
    counted = [k for k in target if not is_batch_counter(k)]
    problems = [f"missing {k} {tuple(target[k].shape)}" for k in counted if k not in tensors and k not in fresh]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in tensors.items() if k not in target]
    problems += [f"{k}: file {tuple(v.shape)}, model {tuple(target[k].shape)}" for k, v in tensors.items()
                 if k in target and v.shape != target[k].shape]
    listed = "; ".join(problems[:12]) + (" ..." if len(problems) > 12 else "")
    if problems and strict:
        hint = " (model.pretrained_strict: false loads what fits)"
        raise ModelFileError(f"{setting}: {weights.uri} does not fit {name} ({len(problems)} problems): "
                             f"{listed}{hint}")
    usable = {k: v for k, v in tensors.items() if k in target and v.shape == target[k].shape}
    loaded = sum(not is_batch_counter(k) for k in usable)
    if not set(usable) - classifier:
        raise ModelFileError(f"{setting}: no tensor of {weights.uri} but the classifier's fits {name} "
                             f"({len(problems)} problems: {listed}): training would start from nothing")
    if problems:
        log.warning("model.pretrained: %s: %d tensors not loaded: %s", weights.uri, len(problems), listed)
    summary = (f"loaded {loaded}/{len(counted)} tensors from {weights.uri} (arch {name}){classes}"
               + (f"; {len(problems)} not loaded (model.pretrained_strict: false)" if problems else ""))
    return Match(usable, fresh, summary)


def load_pretrained(model: nn.Module, name: str, uri: str, options: dict | None = None,
                    strict: bool = True) -> list[str]:
    """Load `uri` into `model`'s backbone (a `RelayNet`'s, or the backbone itself); returns the keys
    that kept their fresh initialisation."""
    backbone = getattr(model, "backbone", model)
    found = match(backbone, name, uri, options, strict)
    backbone.load_state_dict(found.usable, strict=False)
    return found.fresh


def warm_start(model: nn.Module, cfg) -> None:
    """Start `model`, just built from `cfg` (a `TrainConfig`), from saved weights: `model.init_from` (a
    trained shallower VGG: VGG's trick) and `model.pretrained`."""
    m = cfg.model
    if m.init_from:
        state = contents.load(m.init_from)
        shallow = build_model(from_dict(state["config"]))
        shallow.load_state_dict(contents.inference_weights(state))
        init_from_shallower(model.backbone, shallow.backbone)
    if m.pretrained:
        load_pretrained(model, m.name, m.pretrained, m.options, strict=m.pretrained_strict)


def scoring_state(uri: str, arch: str | None = None, class_names: list[str] | None = None) -> dict:
    """The file at `uri` (a file, not a folder) as inference scores it: a checkpoint of training/run.py
    as it is, else a published file as one (`published_as_checkpoint`).  ModelFileError if neither."""
    loc = Location.parse(uri)
    state = contents.read_file(loc)
    return state if contents.is_ours(state) else published_as_checkpoint(state, loc.uri(), arch, class_names)


def published_as_checkpoint(state: object, uri: str, arch: str | None = None,
                            class_names: list[str] | None = None) -> dict:
    """A published file's contents as the state a checkpoint of training/run.py holds (`config`,
    `model`, `class_names`, `published`: True, and `summary`: what was loaded), so the inference tools
    score it as their own: the network its `arch` names (else `arch`), the class count of its
    classifier, and the release's preprocessing (a 224 centre crop of a 256 shorter side, ImageNet
    mean and std: the config's defaults)."""
    tensors, their_arch = unwrap(state, uri)
    named = their_arch and our_architecture(their_arch, uri)
    given = arch and our_architecture(arch, "--arch")
    if named and given and named != given:
        raise ModelFileError(f"{uri} holds a {named} (its arch {their_arch!r}), not the --arch {arch}")
    name = named or given
    if not name:
        raise ModelFileError(f"{uri} names no architecture (no 'arch' beside its state_dict): give --arch, "
                             f"one of {', '.join(sorted(TORCHVISION_TWINS))}")
    with torch.device("meta"):
        classifier = next(k for k in classifier_keys(create_model(name, 1000).backbone) if k.endswith(".weight"))
    tensors = backbone_tensors(tensors, name)
    if classifier not in tensors:
        raise ModelFileError(f"{uri}: no tensor of it is {name}'s classifier ({classifier})")
    classes = len(tensors[classifier])
    if class_names is not None and len(class_names) != classes:
        raise ModelFileError(f"{uri} predicts {classes} classes; the categories file names {len(class_names)}")
    cfg = load(None, [f"model.name={name}", f"model.num_classes={classes}", "model.mode=bp"])
    model = create_model(name, classes, mode="bp")
    found = fit(model.backbone, name, Weights(tensors, name, uri), setting="--checkpoint")
    weights = model.state_dict()  # num_batches_tracked, where the file has none, as built
    weights.update({f"backbone.{k}": v for k, v in found.usable.items()})
    return {"config": to_dict(cfg), "model": weights, "ema": None, "class_names": class_names, "history": [],
            "published": True, "summary": found.summary}
