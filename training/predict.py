"""What a trained model sees in your images: top-5 scenes with probabilities and a class activation map.

    python training/predict.py --checkpoint CKPT IMAGE_OR_FOLDER [...] [--out DIR] [--top 5] \
        [--method auto|cam|gradcam]
    places-predict ...                    (the same, installed with the package)

CKPT: a `state.pt`, its checkpoint folder, a run folder (its best checkpoint, as evaluate.py picks it),
or a published model file: the CSAILVision Places365 `.pth.tar` files as released, or a torchvision
`state_dict` (`--arch` names its network), its class names from `--categories categories_places365.txt`,
scored as the release did (224 centre crop of a 256 shorter side). A folder is searched recursively for
image files (.jpg .jpeg .png .gif .bmp .tif .tiff .webp, any case). Every image goes through sharding's
preparation (`pipelines/media/images.py`: EXIF rotation, CMYK, greyscale, palette and alpha images to
RGB, large JPEGs decoded at reduced size), then evaluation's centre crop at the checkpoint's
`data.eval_resize` / `data.size`. For each image, one console line and one line of DIR/predictions.jsonl
(`{"image", "top": [[class, probability], ...], "attributes", "cam"}`; `attributes`: for a model with an
attribute head, those at or above the threshold chosen for each on validation, with their probabilities,
most probable first), and DIR/<name>.cam.png: the crop the network scored beside it overlaid with the
top class's activation map (CAM for global-average-pooled heads, Grad-CAM otherwise: `training/cam.py`).
A file that cannot be read is one error line; the others are still processed, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.arguments import positive_int
from common.console import report_failure
from common.storage import Location, check_out_outside
from common.tool_settings import new_parser, parse
from training.prediction import IMAGE_EXTENSIONS, Model, image_files, score_files


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched for them")
    p.add_argument("--checkpoint", required=True, help="state.pt, a checkpoint folder, a run folder, or a published "
                                                       "model file (resnet18_places365.pth.tar)")
    p.add_argument("--arch", help="the network of a published model file that does not name it (a torchvision "
                                  "state_dict): resnet18, alexnet_owt, densenet161, ...")
    p.add_argument("--categories", help="class names of a published model file (categories_places365.txt)")
    p.add_argument("--out", default="predictions", help="folder for predictions.jsonl and the maps")
    p.add_argument("--top", type=positive_int, default=5, help="classes per image")
    p.add_argument("--method", choices=["auto", "cam", "gradcam"], default="auto",
                   help="auto: CAM for global-average-pooled heads, Grad-CAM otherwise")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    from training.checkpoint.lookup import CheckpointError
    from training.models.heads import PoolLinearHead

    try:
        for given in a.inputs:  # a rerun would score the maps as images
            if os.path.isdir(given):
                check_out_outside(a.out, given, "the input folder", "write the maps elsewhere")
        files = image_files(a.inputs)
        if not files:
            raise ValueError(f"no image files in {', '.join(a.inputs)} (looked for {' '.join(IMAGE_EXTENSIONS)})")
        model = Model(a.checkpoint, a.arch, a.categories)
        if a.method == "cam" and not isinstance(model.backbone.head, PoolLinearHead):
            raise ValueError(f"--method cam needs a global-average-pooled head; this model's is "
                             f"{type(model.backbone.head).__name__}: use gradcam or auto")
        out = Location.parse(a.out)
        out.make_dirs()
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("predict.py", exc, a.verbose)
    for line in (model.note, model.summary):
        if line:
            print(line)
    return score_files(model, files, out, a.top, a.method)


if __name__ == "__main__":
    sys.exit(main())
