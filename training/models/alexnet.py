"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2013).

AlexNet: C(96,11,4)-LRN-P-C(256,5,1)-LRN-P-C(384,3,1)-C(384,3,1)-C(256,3,1)-P-FC4096-FC4096-FC, with
overlapping 3x3/2 max-pooling, weights N(0, 0.01) and biases 1 in conv2/4/5 and the hidden FC layers
(`init: gaussian`, the paper's).  The two-GPU split is kept as grouped convolutions (groups=2) in
conv2, conv4 and conv5, where the paper's GPUs did not talk to each other.  ZFNet replaces the first
layer by 7x7 stride 2 and conv2's stride by 2, with dense (ungrouped) convolutions, pools before it
normalises, and can drop out input pixels.

`alexnet_owt` is the variant of Krizhevsky's "One weird trick" (2014) that torchvision ships as
`alexnet`, and so the one the CSAILVision Places365 release trained (`alexnet_places365.pth.tar`):
C(64,11,4)-P-C(192,5,1)-P-C(384,3,1)-C(256,3,1)-C(256,3,1)-P-FC4096-FC4096-FC, no LRN, no groups,
dropout on the inputs of fc6 and fc7.
"""

from __future__ import annotations

import math

import torch.nn as nn

from training.models.base import StagedNet
from training.models.heads import FCHead
from training.models.registry import register_model
from training.models.vgg import lrn


def _out(size: int, kernel: int, stride: int, pad: int = 0, ceil: bool = False) -> int:
    f = math.ceil if ceil else math.floor
    return f((size + 2 * pad - kernel) / stride) + 1


def _conv(cin, cout, k, s=1, p=0, groups=1):
    return [nn.Conv2d(cin, cout, k, s, p, groups=groups), nn.ReLU(inplace=True)]


class AlexNet(StagedNet):
    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.5,
                 groups: int = 2, init: str = "gaussian"):
        stages = [
            ("conv1", nn.Sequential(*_conv(3, 96, 11, 4, 2), lrn(), nn.MaxPool2d(3, 2))),
            ("conv2", nn.Sequential(*_conv(96, 256, 5, 1, 2, groups), lrn(), nn.MaxPool2d(3, 2))),
            ("conv3", nn.Sequential(*_conv(256, 384, 3, 1, 1), *_conv(384, 384, 3, 1, 1, groups),
                                    *_conv(384, 256, 3, 1, 1, groups), nn.MaxPool2d(3, 2))),
        ]
        s = _out(_out(input_size, 11, 4, 2), 3, 2)
        s = _out(_out(s, 3, 2), 3, 2)
        super().__init__(stages, FCHead((256, s, s), (4096, 4096), num_classes, dropout), num_classes, init=init)
        if init == "gaussian":  # the paper's: biases 1 in conv2, conv4, conv5 and the hidden FC layers, else 0
            convs = [m for m in self.stages.modules() if isinstance(m, nn.Conv2d)]
            hidden = [m for m in self.head.modules() if isinstance(m, nn.Linear)][:-1]
            for layer in [convs[1], convs[3], convs[4], *hidden]:
                nn.init.ones_(layer.bias)


class ZFNet(StagedNet):
    """ZF's order within conv1 and conv2 is conv, ReLU, max-pool, then contrast normalisation (AlexNet's
    normalises before pooling).  `input_dropout`: the dropout ZF's ILSVRC-2013 entry "introduced in the
    input layer", on the image before conv1; 0 leaves it out."""

    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.5,
                 input_dropout: float = 0.0, init: str = "gaussian"):
        if not 0 <= input_dropout < 1:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
        first = [nn.Dropout(input_dropout)] if input_dropout else []
        stages = [
            ("conv1", nn.Sequential(*first, *_conv(3, 96, 7, 2, 1), nn.MaxPool2d(3, 2, ceil_mode=True), lrn())),
            ("conv2", nn.Sequential(*_conv(96, 256, 5, 2, 0), nn.MaxPool2d(3, 2, ceil_mode=True), lrn())),
            ("conv3", nn.Sequential(*_conv(256, 384, 3, 1, 1), *_conv(384, 384, 3, 1, 1),
                                    *_conv(384, 256, 3, 1, 1), nn.MaxPool2d(3, 2, ceil_mode=True))),
        ]
        s = _out(_out(input_size, 7, 2, 1), 3, 2, ceil=True)  # 224 -> 110 -> 55
        s = _out(_out(s, 5, 2), 3, 2, ceil=True)  # -> 26 -> 13
        s = _out(s, 3, 2, ceil=True)  # -> 6
        super().__init__(stages, FCHead((256, s, s), (4096, 4096), num_classes, dropout), num_classes, init=init)


class AlexNetOWT(StagedNet):
    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.5, init: str = "he"):
        stages = [
            ("conv1", nn.Sequential(*_conv(3, 64, 11, 4, 2), nn.MaxPool2d(3, 2))),
            ("conv2", nn.Sequential(*_conv(64, 192, 5, 1, 2), nn.MaxPool2d(3, 2))),
            ("conv3", nn.Sequential(*_conv(192, 384, 3, 1, 1), *_conv(384, 256, 3, 1, 1),
                                    *_conv(256, 256, 3, 1, 1), nn.MaxPool2d(3, 2))),
        ]
        s = _out(_out(input_size, 11, 4, 2), 3, 2)  # 224 -> 55 -> 27
        s = _out(_out(s, 3, 2), 3, 2)  # -> 13 -> 6: torchvision's 6x6 average pool is then the identity
        head = FCHead((256, s, s), (4096, 4096), num_classes, dropout, dropout_first=True)
        super().__init__(stages, head, num_classes, init=init)


register_model("alexnet")(lambda num_classes=1000, **options: AlexNet(num_classes, **options))
register_model("alexnet_owt")(lambda num_classes=1000, **options: AlexNetOWT(num_classes, **options))
register_model("zfnet")(lambda num_classes=1000, **options: ZFNet(num_classes, **options))
