"""Every architecture of the source papers behind one call.

    model = create_model("wm_model_a", num_classes=365)            # relay BP, the seed's branch
    model = create_model("vgg_d", num_classes=365, mode="loss12_bp")
    losses = model(images, labels)          # {"loss", "loss1", "loss2", ..., "logits"}
    deploy = model.export()                 # the network without auxiliary heads

    model = build_model(cfg)                # the one a TrainConfig describes

`list_models()` names them all.  Options beyond the auxiliary ones go to the family's builder
(`input_size`, `width`, `fc`, `batch_norm`, `dropout`, `init` ...).
"""

from training.models import alexnet, densenet, googlenet, resnet, simple, vgg, video, wm  # noqa: F401  (registers)
from training.models.base import AuxDefaults, BranchSpec, StagedNet, initialize
from training.models.factory import build_model, clip_offsets_for, create_model
from training.models.registry import build_backbone, clip_offsets, list_models, register_model
from training.models.relay import MODES, AuxOutputs, RelayNet
from training.models.vgg import init_from_shallower

__all__ = ["create_model", "build_model", "clip_offsets", "clip_offsets_for", "list_models", "register_model",
           "build_backbone", "RelayNet", "AuxOutputs", "StagedNet", "BranchSpec", "AuxDefaults", "MODES",
           "initialize", "init_from_shallower"]
