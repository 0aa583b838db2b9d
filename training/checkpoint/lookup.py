"""Which checkpoint a tool scores or starts from, read and checked: a checkpoint file, a checkpoint
folder, a run folder's best (by top-1 error), a published model file read as a checkpoint, and the best
kept checkpoint of a finished Ray Train run.  A file that is none of these, or whose weights diverged,
is a CheckpointError naming it."""

from __future__ import annotations

import json

from common.storage import Location
from training.checkpoint.contents import CHECKPOINT_FILE, inference_weights, non_finite_tensors
from training.pretrained import scoring_state
from training.published import ModelFileError


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(path: str, arch: str | None = None,
                       class_names: list[str] | None = None) -> tuple[str, dict, str | None]:
    """(the file to score, its contents, a note saying which one when a run folder was given).  A run
    folder (training/run.py's `runs/<run>`) gives its best kept checkpoint by the run's metric, top-1
    error: the one its report.json names, else the best of its checkpoint folders.  A published model
    file is read as a checkpoint (`training/pretrained.py`: its network from the file's own `arch`,
    else the `arch` given; its class names `class_names`).  Each file is read once."""
    loc = Location.parse(path)
    if loc.is_file():
        return path, read_checkpoint(path, arch, class_names), None
    if loc.is_file(CHECKPOINT_FILE):
        return loc.child(CHECKPOINT_FILE).uri(), read_checkpoint(loc.child(CHECKPOINT_FILE).uri()), None
    children = loc.list_dir() if loc.is_dir() else []  # listed, not globbed: the path may hold [ or ?
    candidates = [name for name, kind in children if kind == "directory" and name.startswith("checkpoint_")
                  and loc.is_file(f"{name}/{CHECKPOINT_FILE}")]
    if not candidates:
        raise CheckpointError(f"--checkpoint {path}: neither a {CHECKPOINT_FILE}, a checkpoint folder holding "
                              f"one, nor a run folder with checkpoint_*/{CHECKPOINT_FILE}")
    if loc.is_file("report.json"):  # a finished run names its best checkpoint
        named = (json.loads(loc.read_bytes("report.json")).get("best_checkpoint") or "").rstrip("/")
        candidates = [f for f in candidates if named.endswith("/" + f)] or candidates
    best, state = None, None
    for folder in candidates:  # one state in memory at a time
        candidate = read_checkpoint(loc.child(f"{folder}/{CHECKPOINT_FILE}").uri())
        if state is None or candidate["history"][-1]["top1_error"] < state["history"][-1]["top1_error"]:
            best, state = folder, candidate
    last = state["history"][-1]
    note = (f"{path}: best checkpoint of the run by top-1 error: {best} (epoch {last['epoch'] + 1}, "
            f"top-1 error {100 * last['top1_error']:.2f}% in training's validation)")
    return loc.child(f"{best}/{CHECKPOINT_FILE}").uri(), state, note


def read_checkpoint(path: str, arch: str | None = None, class_names: list[str] | None = None) -> dict:
    """A checkpoint written by training/run.py, or a published model file read as one, or CheckpointError
    naming the file."""
    try:
        state = scoring_state(path, arch, class_names)
    except ModelFileError as exc:
        raise CheckpointError(f"--checkpoint {path}: not a checkpoint written by training/run.py, nor a published "
                              f"model file: {exc}") from None
    bad = non_finite_tensors(inference_weights(state))
    if bad:  # its scores would be NaN: every ranking 0 1 2 3 4
        raise CheckpointError(f"--checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): the run diverged; "
                              f"score an earlier checkpoint")
    return state


def best_checkpoint(result, storage_path: str) -> tuple[str, dict] | None:
    """(URI, metrics) of a finished run's kept checkpoint with the lowest top-1 error.  Ray's paths
    are relative to the storage filesystem: the URI gets storage_path's scheme (s3://...) back."""
    if not result.best_checkpoints:
        return None
    checkpoint, metrics = min(result.best_checkpoints, key=lambda c: c[1]["top1_error"])
    scheme = storage_path.split("://")[0] + "://" if "://" in storage_path else ""
    return scheme + checkpoint.path, metrics
