"""What the ranks of a training run exchange beyond DDP's gradients: gathered objects and each rank's
random generators (dropout's draws), which a checkpoint keeps so a resumed run continues them."""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def rng_state(device) -> dict:
    """This rank's torch generators (dropout's draws): a resumed run continues them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
