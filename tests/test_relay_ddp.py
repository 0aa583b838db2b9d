"""Relay BP under DDP: two gloo workers give the gradients one process gets on the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from training.models import create_model


def make_model():
    torch.manual_seed(0)
    return create_model("wm_model_a", 5, mode="relay", width=0.0625, fc=16, dropout=0.0).double().train()


def global_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


def worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = DDP(make_model())  # find_unused_parameters=False: relay must give every parameter a gradient
    x, y = global_batch()
    shard = slice(rank * 4, rank * 4 + 4)
    model(x[shard], y[shard])["loss"].backward()  # through DDP's forward, one backward per step
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    dist.barrier()  # tear down together: a rank leaving while the other still works aborts gloo
    dist.destroy_process_group()


def test_two_gloo_workers_match_one_process_in_relay_mode(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)

    single = make_model()
    x, y = global_batch()
    single(x, y)["loss"].backward()
    assert set(ddp_grads) == {n for n, _ in single.named_parameters()}
    for name, p in single.named_parameters():
        assert ddp_grads[name] is not None, name
        assert torch.allclose(ddp_grads[name], p.grad, rtol=1e-10, atol=1e-12), name
