"""Start a model from saved weights (`model.pretrained`): a torchvision `state_dict` file, or a
checkpoint of ours.  Never downloads: where there is network access, make the file with

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet50(
        weights='IMAGENET1K_V2').state_dict(), 'resnet50-imagenet.pt')"

Accepted files (loaded with `weights_only=True`, local or any fsspec URI):
- torchvision `state_dict`s of the networks we share with torchvision (`TORCHVISION_TWINS`): the
  name map is derived by pairing both networks' tensors in their (identical) registration order, each
  pair checked for name suffix and shape, so it is exact by construction and needs no table to drift;
- a `state.pt` written by training/run.py, its checkpoint folder, or a finished run's folder (its
  `report.json` names the best checkpoint): the inference weights;
- the `state_dict` of one of our backbones (`model.export().state_dict()`).

Strict: any missing, unexpected or mis-shaped tensor is one error listing them all.  The one
exception is the classifier (the backbone's last linear layer): when its class count differs it keeps
its fresh initialisation, as do auxiliary heads, which no file supplies.

Which architectures can load torchvision weights, and why the others cannot: resnet18/34/50/101/152,
resnext50_32x4d, densenet121 and vgg_a/b/d/e (with and without `_bn`: torchvision's vgg11/13/16/19)
are the same networks.  At `input_size` 224 only for VGG (its first FC layer sees a 7x7 map;
torchvision pools any input to 7x7) and only with the default ResNet options (`shortcut_type` A and
`bottleneck_stride` 1x1 are other networks).  No torchvision twin: alexnet (torchvision's is the
"one weird trick" variant: 64-192-384-256-256 filters, no LRN), googlenet (torchvision's has batch
norm and other auxiliary heads), vgg_c and vgg_a_lrn, plain18/34, zfnet, the WM models and
simple_net.
"""

from __future__ import annotations

import io
import json
import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

TORCHVISION_TWINS = {
    **{name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                               "densenet121")},
    **{f"vgg_{ours}{bn}": f"vgg{depth}{bn}" for ours, depth in (("a", 11), ("b", 13), ("d", 16), ("e", 19))
       for bn in ("", "_bn")},
}
OTHER_NETWORK_OPTIONS = {"shortcut_type": "B", "bottleneck_stride": "3x3", "input_size": 224}


class PretrainedError(ValueError):
    pass


def torchvision_name_map(name: str, options: dict | None = None) -> dict[str, str]:
    """torchvision key -> our backbone key for architecture `name` (built on the meta device: no memory)."""
    import torchvision

    from training.models import build_backbone

    options = options or {}
    if name not in TORCHVISION_TWINS:
        raise PretrainedError(f"{name} has no torchvision twin; torchvision weights load into "
                              f"{', '.join(sorted(TORCHVISION_TWINS))} (see training/pretrained.py for why)")
    for key, default in OTHER_NETWORK_OPTIONS.items():
        if key in options and options[key] != default and not (key == "input_size" and not name.startswith("vgg")):
            raise PretrainedError(f"{name} with {key}={options[key]!r} is not torchvision's {TORCHVISION_TWINS[name]} "
                                  f"(only {key}={default!r} is)")
    with torch.device("meta"):
        theirs = getattr(torchvision.models, TORCHVISION_TWINS[name])().state_dict()
        ours = build_backbone(name, 1000, **options).state_dict()
    if len(theirs) != len(ours):
        raise PretrainedError(f"{name}: {len(ours)} tensors, torchvision's {TORCHVISION_TWINS[name]} {len(theirs)}")
    mapping = {}
    for (their_key, a), (our_key, b) in zip(theirs.items(), ours.items()):
        if their_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or a.shape != b.shape:
            raise PretrainedError(f"{name}: torchvision's {their_key} {tuple(a.shape)} does not pair with our "
                                  f"{our_key} {tuple(b.shape)}")
        mapping[their_key] = our_key
    return mapping


def read_weights(uri: str) -> dict:
    """The file's tensors (`weights_only=True`): a checkpoint of ours gives its inference weights."""
    from pipelines.storage import Location
    from training.train_loop import CHECKPOINT_FILE, inference_weights

    loc = Location.parse(uri)
    if loc.is_dir() and loc.is_file("report.json"):  # a finished run's folder: its best checkpoint
        best = json.loads(loc.read_bytes("report.json")).get("best_checkpoint")
        if not best:
            raise PretrainedError(f"model.pretrained: the run at {loc.uri()} kept no checkpoint")
        loc = Location.parse(best)
    if loc.is_dir():
        loc = loc.child(CHECKPOINT_FILE)
    if not loc.is_file():
        raise PretrainedError(f"model.pretrained: no file at {loc.uri()}")
    try:
        state = torch.load(io.BytesIO(loc.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, a zip that is not torch's, a non-tensor object...
        raise PretrainedError(f"model.pretrained: {loc.uri()} is not a weights file torch.load can read safely "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "model" in state and "config" in state:  # a state.pt of ours
        weights = inference_weights(state)
        return {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"model.pretrained: {loc.uri()} holds a {type(state).__name__}, not a state_dict "
                              f"(name -> tensor) or a checkpoint of training/run.py")
    return state


def classifier_keys(backbone: nn.Module) -> set[str]:
    """The state keys of the backbone's last linear layer (the one whose size is the class count)."""
    last = backbone.classifier()[0]
    return {f"{last}.weight", f"{last}.bias"}


def match(backbone: nn.Module, name: str, uri: str, options: dict | None = None,
          strict: bool = True) -> tuple[dict, list[str]]:
    """(the file's tensors under our backbone's names that fit it, what keeps its fresh initialisation:
    the classifier when the class count differs).  Raises PretrainedError listing every missing,
    unexpected or mis-shaped tensor (with `strict=False`: logs them)."""
    weights = read_weights(uri)
    target = backbone.state_dict()
    if not set(weights) & set(target):  # torchvision's names, or another network's
        if name not in TORCHVISION_TWINS:
            raise PretrainedError(f"model.pretrained: none of the {len(weights)} tensors of {uri} is named as {name}'s "
                                  f"(e.g. {next(iter(weights), '-')!r}), and {name} has no torchvision twin: "
                                  f"torchvision weights load into {', '.join(sorted(TORCHVISION_TWINS))}")
        mapping = torchvision_name_map(name, options)
        weights = {mapping.get(k, f"(torchvision) {k}"): v for k, v in weights.items()}
    fresh = []
    classifier = classifier_keys(backbone)
    if all(k in weights and weights[k].shape != target[k].shape for k in classifier):
        fresh = sorted(classifier)  # another class count: this layer is new
        weights = {k: v for k, v in weights.items() if k not in classifier}
    problems = [f"missing {k} {tuple(target[k].shape)}" for k in target if k not in weights and k not in fresh]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in weights.items() if k not in target]
    problems += [f"{k}: file {tuple(v.shape)}, model {tuple(target[k].shape)}" for k, v in weights.items()
                 if k in target and v.shape != target[k].shape]
    if problems and strict:
        raise PretrainedError(f"model.pretrained: {uri} does not fit {name} ({len(problems)} problems): "
                              + "; ".join(problems[:12]) + (" ..." if len(problems) > 12 else "")
                              + " (model.pretrained_strict: false loads what fits)")
    if problems:
        log.warning("model.pretrained: %s: %d tensors not loaded: %s", uri, len(problems), "; ".join(problems[:12]))
    return {k: v for k, v in weights.items() if k in target and v.shape == target[k].shape}, fresh


def load_pretrained(model: nn.Module, name: str, uri: str, options: dict | None = None,
                    strict: bool = True) -> list[str]:
    """Load `uri` into `model`'s backbone (a `RelayNet`'s, or the backbone itself); returns the keys
    that kept their fresh initialisation."""
    backbone = getattr(model, "backbone", model)
    usable, fresh = match(backbone, name, uri, options, strict)
    backbone.load_state_dict(usable, strict=False)
    return fresh
