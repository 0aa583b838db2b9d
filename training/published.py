"""Model files as other projects publish them: torchvision `state_dict`s and the CSAILVision Places365
release (`resnet18_places365.pth.tar`, `resnet50_`, `alexnet_`, `densenet161_`, `wideresnet18_`).

The CSAILVision files are `torch.save({'epoch', 'arch', 'state_dict', 'best_prec1'})` of a model
wrapped in `nn.DataParallel`, so every key starts with `module.`; their `arch` is torchvision's name
of the network; densenet161's keys use torchvision's names before 0.3 (`denselayer1.norm.1.weight`
for `denselayer1.norm1.weight`); and they predate BatchNorm's `num_batches_tracked`.  `unwrap` undoes
all four, and the tensors then load as torchvision's would.  Their wideresnet18 is their own network
(places365's `wideresnet.py`), not one of ours, and is refused saying so.

Which of our architectures are torchvision's networks (`TORCHVISION_TWINS`): resnet18/34/50/101/152,
resnext50_32x4d, densenet121/161, alexnet_owt (torchvision's `alexnet`) and vgg_a/b/d/e (with and
without `_bn`: torchvision's vgg11/13/16/19).  The networks with fully connected heads (VGG, AlexNet)
only at `input_size` 224 (their first FC layer sees a 7x7 or 6x6 map; torchvision pools any input to
that size), and ResNets only with the default options (`shortcut_type` A and `bottleneck_stride` 1x1
are other networks).  No torchvision twin: alexnet (the paper's: 96-256-384-384-256 filters, LRN,
grouped convolutions), googlenet (torchvision's has batch norm and other auxiliary heads), vgg_c and
vgg_a_lrn, plain18/34, zfnet, the WM models and simple_net.

The name map is derived by pairing both networks' tensors in their (identical) registration order,
each pair checked for name suffix and shape, so it is exact by construction and needs no table.
"""

from __future__ import annotations

import re

import torch

TORCHVISION_TWINS = {
    **{name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                               "densenet121", "densenet161")},
    "alexnet_owt": "alexnet",
    **{f"vgg_{ours}{bn}": f"vgg{depth}{bn}" for ours, depth in (("a", 11), ("b", 13), ("d", 16), ("e", 19))
       for bn in ("", "_bn")},
}
OURS_BY_TORCHVISION_NAME = {theirs: ours for ours, theirs in TORCHVISION_TWINS.items()}
OTHER_NETWORK_OPTIONS = {"shortcut_type": "B", "bottleneck_stride": "3x3", "input_size": 224}
FC_HEADED = ("vgg_", "alexnet_owt")  # input_size changes their first FC layer
NOT_OURS = {"wideresnet18": "the CSAILVision wide ResNet-18 (places365's wideresnet.py: basic blocks, no "
                            "max-pooling after conv1, average pooling over 14x14) is not an architecture of "
                            "this project"}
# torchvision < 0.3 named DenseNet's layers norm.1, relu.1, conv.1 ...: torchvision's own loader rewrites them
OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                              r"running_var))$")


class ModelFileError(ValueError):
    """A model file that cannot be read, or not as the network it is to fill."""


def unwrap(obj: object, where: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(the tensors under torchvision's names, the file's `arch` or None) of a published file: a bare
    `state_dict`, or CSAILVision's `{'state_dict': ..., 'arch': ...}`, keys `module.`-prefixed or not."""
    arch = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        arch = obj["arch"] if isinstance(obj.get("arch"), str) else None
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{where} holds a {type(obj).__name__}, not a state_dict (name -> tensor), a "
                             f"{{'state_dict': ...}} file of the CSAILVision release, or a checkpoint of "
                             f"training/run.py")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return {OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in obj.items()}, arch


def our_architecture(arch: str, where: str) -> str:
    """Our name of the network a file calls `arch` (torchvision's names, as the CSAILVision files use)."""
    if arch in NOT_OURS:
        raise ModelFileError(f"{where}: its arch {arch!r}: {NOT_OURS[arch]}")
    if arch in OURS_BY_TORCHVISION_NAME:
        return OURS_BY_TORCHVISION_NAME[arch]
    if arch in TORCHVISION_TWINS:
        return arch
    raise ModelFileError(f"{where}: arch {arch!r} is neither one of ours with torchvision weights "
                         f"({', '.join(sorted(TORCHVISION_TWINS))}) nor torchvision's name of one "
                         f"({', '.join(sorted(OURS_BY_TORCHVISION_NAME))})")


def torchvision_name_map(name: str, options: dict | None = None) -> dict[str, str]:
    """torchvision key -> our backbone key for architecture `name` (built on the meta device: no memory)."""
    import torchvision

    from training.models import build_backbone

    options = options or {}
    if name not in TORCHVISION_TWINS:
        raise ModelFileError(f"{name} has no torchvision twin; torchvision weights load into "
                             f"{', '.join(sorted(TORCHVISION_TWINS))} (see training/published.py for why)")
    for key, default in OTHER_NETWORK_OPTIONS.items():
        if key in options and options[key] != default and not (key == "input_size" and not name.startswith(FC_HEADED)):
            raise ModelFileError(f"{name} with {key}={options[key]!r} is not torchvision's {TORCHVISION_TWINS[name]} "
                                 f"(only {key}={default!r} is)")
    with torch.device("meta"):
        theirs = getattr(torchvision.models, TORCHVISION_TWINS[name])().state_dict()
        ours = build_backbone(name, 1000, **options).state_dict()
    if len(theirs) != len(ours):
        raise ModelFileError(f"{name}: {len(ours)} tensors, torchvision's {TORCHVISION_TWINS[name]} {len(theirs)}")
    mapping = {}
    for (their_key, a), (our_key, b) in zip(theirs.items(), ours.items()):
        if their_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or a.shape != b.shape:
            raise ModelFileError(f"{name}: torchvision's {their_key} {tuple(a.shape)} does not pair with our "
                                 f"{our_key} {tuple(b.shape)}")
        mapping[their_key] = our_key
    return mapping


def backbone_tensors(tensors: dict[str, torch.Tensor], name: str, options: dict | None = None) -> dict:
    """A published file's tensors under our backbone's names (those named for no tensor of ours keep
    a `(torchvision) ` prefix, so a strict load lists them)."""
    mapping = torchvision_name_map(name, options)
    return {mapping.get(k, f"(torchvision) {k}"): v for k, v in tensors.items()}


def is_batch_counter(key: str) -> bool:
    """BatchNorm's `num_batches_tracked`: files written before torch 0.4.1 have none, and it only
    matters to a BatchNorm without momentum, which no network here has."""
    return key.endswith(".num_batches_tracked")
