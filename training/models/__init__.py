"""Every architecture of the source papers behind one call.

    model = create_model("wm_model_a", num_classes=365)            # relay BP, the seed's branch
    model = create_model("vgg_d", num_classes=365, mode="loss12_bp")
    losses = model(images, labels)          # {"loss", "loss1", "loss2", ..., "logits"}
    deploy = model.export()                 # the network without auxiliary heads

`list_models()` names them all.  Options beyond the auxiliary ones go to the family's builder
(`input_size`, `width`, `fc`, `batch_norm`, `dropout`, `init` ...).
"""

from training.models import alexnet, densenet, googlenet, resnet, simple, vgg, video, wm  # noqa: F401  (registers)
from training.models.base import AuxDefaults, BranchSpec, StagedNet, initialize
from training.models.registry import build_backbone, list_models, register_model
from training.models.relay import MODES, AuxOutputs, RelayNet, wrap
from training.models.vgg import init_from_shallower


def create_model(name: str, num_classes: int = 1000, *, mode: str | None = None,
                 branch: str | list[str] | None = None, aux_head: str | None = None,
                 aux_weight: float | None = None, overlap: int = 1, label_smoothing: float = 0.0,
                 num_attributes: int = 0, attribute_weight: float = 1.0, scene_weight: float = 1.0,
                 **options) -> RelayNet:
    return wrap(build_backbone(name, num_classes, **options), mode=mode, branch=branch, aux_head=aux_head,
                aux_weight=aux_weight, overlap=overlap, label_smoothing=label_smoothing,
                num_attributes=num_attributes, attribute_weight=attribute_weight, scene_weight=scene_weight)


__all__ = ["create_model", "list_models", "register_model", "build_backbone", "RelayNet", "AuxOutputs",
           "StagedNet", "BranchSpec", "AuxDefaults", "MODES", "initialize", "init_from_shallower"]
