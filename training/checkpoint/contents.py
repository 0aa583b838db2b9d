"""A training checkpoint: a folder holding one file, `state.pt`, a dict saved with `torch.save` and read
with `weights_only=True`.  `build` names its fields:

- `model`, `optimizer`, `scheduler`, `scaler`, `ema`: the state_dicts (`ema` None without EMA);
- `epoch`, `step`: where it was written (the epoch's end, or inside it when `tallies` is set);
- `streams`, `rng`, `tallies`: every rank's input-stream state, torch generators and, mid-epoch, its
  `EpochTally`, so a resumed run consumes and reports exactly what an uninterrupted one would;
- `config`: the run's `TrainConfig` as a dict; `history`: every epoch's metrics up to this one;
- `fit_id`: which fit wrote it (a restart within the fit continues the same input stream);
- `class_names`: the training catalog's (what evaluate.py checks shards against);
- `attributes`: the attribute names and the F1 thresholds chosen on validation, or None.

A published model file read for scoring (`training/pretrained.py`) takes the same shape with
`published: True`.  Every `state.pt` is opened here and nowhere else.
"""

from __future__ import annotations

import io
import json
import os

import torch

from common.storage import Location
from training.published import ModelFileError

CHECKPOINT_FILE = "state.pt"


def build(*, model: dict, optimizer: dict, scheduler: dict, scaler: dict, ema: dict | None, epoch: int,
          step: int, streams: list, rng: list, tallies: list | None, config: dict, history: list[dict],
          fit_id: str | None, class_names: list[str], attributes: dict | None) -> dict:
    """A checkpoint's contents, every field named (see the module's docstring)."""
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema,
            "epoch": epoch, "step": step, "streams": streams, "rng": rng, "tallies": tallies, "config": config,
            "history": history, "fit_id": fit_id, "class_names": class_names, "attributes": attributes}


def save(folder: str, state: dict) -> None:
    torch.save(state, os.path.join(folder, CHECKPOINT_FILE))


def load(uri: str) -> dict:
    """A `state.pt` written by training (or the checkpoint folder holding it), local or any fsspec URI."""
    loc = Location.parse(uri)
    if loc.is_dir():
        loc = loc.child(CHECKPOINT_FILE)
    return torch.load(io.BytesIO(loc.read_bytes()), map_location="cpu", weights_only=True)


def load_reported(checkpoint, device="cpu") -> dict:
    """The state of a `ray.train.Checkpoint` that training reported."""
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location=device, weights_only=True)


def history(checkpoint) -> list[dict]:
    """Every epoch's metrics up to a reported checkpoint's epoch."""
    return load_reported(checkpoint)["history"]


def read_file(loc) -> object:
    """What `torch.load(weights_only=True)` reads from `loc` (a `Location`): a checkpoint of ours or a
    published model file; ModelFileError naming it when it is neither readable nor safe."""
    try:
        data = loc.read_bytes()
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True) if data else None
    except Exception as exc:  # pickle errors, a zip that is not torch's, a non-tensor object...
        raise ModelFileError(f"{loc.uri()} is not a weights file torch.load can read safely "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not data:
        raise ModelFileError(f"{loc.uri()} is empty (0 bytes): a download that did not finish?")
    return weights


def locate(uri: str) -> Location:
    """The weights file `uri` names: a file, a checkpoint folder (its `state.pt`), or a finished run's
    folder (the best checkpoint its `report.json` names)."""
    loc = Location.parse(uri)
    if loc.is_dir() and loc.is_file("report.json"):
        best = json.loads(loc.read_bytes("report.json")).get("best_checkpoint")
        if not best:
            raise ModelFileError(f"model.pretrained: the run at {loc.uri()} kept no checkpoint")
        loc = Location.parse(best)
    if loc.is_dir():
        loc = loc.child(CHECKPOINT_FILE)
    if not loc.is_file():
        raise ModelFileError(f"model.pretrained: no file at {loc.uri()}")
    return loc


def is_ours(obj: object) -> bool:
    """Whether what a file held is a checkpoint of training (else a published model file)."""
    return isinstance(obj, dict) and "model" in obj and "config" in obj


def inference_weights(state: dict) -> dict:
    """The weights a checkpoint is validated and exported with: the moving average when EMA was on."""
    if state.get("ema"):
        return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    return state["model"]


def non_finite_tensors(weights: dict) -> list[str]:
    """The names of floating-point tensors holding NaN or infinity: a diverged run's."""
    return [name for name, t in weights.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
