"""VGG configurations A, A-LRN, B, C, D, E (Simonyan & Zisserman, Table 1), plus batch-norm variants.

Each configuration is data: one list per stage (every stage ends in a 2x2 max-pool), an int is a
3x3 convolution with that many filters, ``(n, 1)`` a 1x1 convolution (config C), ``"LRN"`` local
response normalisation (A-LRN).
"""

from __future__ import annotations

import torch.nn as nn

from training.models.base import StagedNet
from training.models.heads import FCHead
from training.models.lrn import ALEXNET, LocalResponseNorm
from training.models.registry import register_model

cfgs: dict[str, list[list]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "A_LRN": [[64, "LRN"], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "C": [[64, 64], [128, 128], [256, 256, (256, 1)], [512, 512, (512, 1)], [512, 512, (512, 1)]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def lrn() -> nn.Module:
    """AlexNet's LRN as its paper gives it (`lrn.ALEXNET`), which VGG's A-LRN and GoogLeNet reuse."""
    return LocalResponseNorm(**ALEXNET)


def make_stages(cfg: list[list], batch_norm: bool) -> list[tuple[str, nn.Module]]:
    stages, channels = [], 3
    for i, spec in enumerate(cfg, 1):
        layers: list[nn.Module] = []
        for item in spec:
            if item == "LRN":
                layers.append(lrn())
                continue
            out, kernel = item if isinstance(item, tuple) else (item, 3)
            layers.append(nn.Conv2d(channels, out, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        layers.append(nn.MaxPool2d(2, 2))
        stages.append((f"conv{i}", nn.Sequential(*layers)))
    return stages


class VGG(StagedNet):
    def __init__(self, cfg: str, num_classes: int = 1000, batch_norm: bool = False, input_size: int = 224,
                 dropout: float = 0.5, init: str = "glorot"):
        side = input_size // 32
        super().__init__(make_stages(cfgs[cfg], batch_norm), FCHead((512, side, side), (4096, 4096), num_classes,
                                                                     dropout), num_classes, init=init)
        self.cfg = cfg


def _builder(cfg: str, batch_norm: bool):
    return lambda num_classes=1000, **options: VGG(cfg, num_classes, batch_norm=batch_norm, **options)


for _name, _cfg in [("vgg_a", "A"), ("vgg_a_lrn", "A_LRN"), ("vgg_b", "B"), ("vgg_c", "C"), ("vgg_d", "D"),
                    ("vgg_e", "E")]:
    register_model(_name)(_builder(_cfg, batch_norm=False))
    if _cfg != "A_LRN":
        register_model(f"{_name}_bn")(_builder(_cfg, batch_norm=True))


def init_from_shallower(deep: StagedNet, shallow: StagedNet, conv_layers: int = 4) -> list[str]:
    """VGG's trick: start a deeper net from a trained shallower one.

    The first `conv_layers` convolutions of `shallow` (the paper: four, of net A) initialise the
    convolutions at the same position within the same stage of `deep` (A's conv3_2 -> D's conv3_2),
    and every fully connected layer is copied.  Returns the names of the parameters copied.
    """
    copied = []
    shallow_convs = _convs_by_position(shallow)[:conv_layers]
    deep_convs = dict(_convs_by_position(deep))
    for position, src in shallow_convs:
        dst = deep_convs.get(position)
        if dst is None or dst[1].weight.shape != src[1].weight.shape:
            raise ValueError(f"{type(deep).__name__} has no convolution shaped like {src[0]} at {position}")
        dst[1].weight.data.copy_(src[1].weight.data)
        if src[1].bias is not None and dst[1].bias is not None:  # batch-norm nets have none
            dst[1].bias.data.copy_(src[1].bias.data)
        copied.append(dst[0])
    src_fc = [m for m in shallow.head.modules() if isinstance(m, nn.Linear)]
    dst_fc = [(n, m) for n, m in deep.head.named_modules() if isinstance(m, nn.Linear)]
    if [m.weight.shape for m in src_fc] != [m.weight.shape for _, m in dst_fc]:
        raise ValueError("fully connected layers differ in shape (num_classes or input_size?)")
    for s, (name, d) in zip(src_fc, dst_fc):
        d.weight.data.copy_(s.weight.data)
        d.bias.data.copy_(s.bias.data)
        copied.append(f"head.{name}")
    return copied


def _convs_by_position(net: StagedNet):
    """[((stage, index within stage), (qualified name, conv))] in network order."""
    found = []
    for stage_name, stage in net.stages.items():
        convs = [(f"stages.{stage_name}.{n}", m) for n, m in stage.named_modules() if isinstance(m, nn.Conv2d)]
        found += [((stage_name, i), c) for i, c in enumerate(convs)]
    return found
