"""Decoding on the training device (`data.decode: device | hybrid`): the same crops as the workers', the
hybrid's split and its steering, and what happens to a sample that does not decode there."""

from __future__ import annotations

import math
import random

import pytest
import torch

from conftest import encode, scene, write_shards
from common.storage import Location
from pipelines.offline import shard_index
from pipelines.offline.tar_shard import build_shard
from pipelines.online.device_decode import DecodeShare, decode_planned
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.transforms import ColorPCA, TrainTransform, decode, reduced_scale

COUNTS = [30, 17, 9]
PCA = ColorPCA((0.2, 0.02, 0.005), ((0.58, 0.58, 0.57), (-0.71, 0.0, 0.71), (0.41, -0.82, 0.41)))


class FixedShare(DecodeShare):
    """A hybrid split that does not move: the test decides which part the device decodes."""

    def update(self, waited_s: float) -> None:
        pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_decode_shards")
    write_shards(out, COUNTS, shard_samples=8, size=24)
    return str(out)


def on_device(transform: TrainTransform, jpeg: bytes, seed: int) -> tuple[torch.Tensor, list[float]]:
    plan = transform.plan(jpeg, random.Random(seed))
    out = torch.empty(1, 3, transform.size, transform.size)
    assert decode_planned([jpeg], torch.tensor([plan]), out) == []
    return out[0], plan


@pytest.mark.parametrize("crop,w,h,exact", [("rrc", 40, 32, True), ("rrc", 300, 220, True),
                                            ("random_crop", 60, 50, True), ("scale_jitter", 90, 70, True),
                                            ("random_crop", 800, 600, False), ("scale_jitter", 900, 640, False)])
def test_a_plan_is_the_crop_the_workers_draw(crop, w, h, exact):
    """Same draws in the same order (the rng ends in the same state, the PCA alphas are equal) and the same
    crop: to the rounding of the workers' uint8 resize where both decode the full image, and to the
    difference between a reduced-DCT decode and a full one followed by the resize where the workers
    decode reduced (the 800x600 and 900x640 images)."""
    transform = TrainTransform(crop=crop, size=32, jitter=(40, 80), pca=PCA)
    jpeg = encode(scene(w + h, w, h))
    for seed in range(12):
        rng_cpu, rng_plan = random.Random(seed), random.Random(seed)
        cpu, alphas = transform(jpeg, rng_cpu)
        plan = transform.plan(jpeg, rng_plan)
        assert rng_cpu.random() == rng_plan.random() and plan[5:] == alphas
        device, _ = on_device(transform, jpeg, seed)
        diff = (device - cpu.float()).abs()
        if exact:
            assert diff.max() <= 1.0, (seed, float(diff.max()))
        else:
            assert diff.mean() < 3.0, (seed, float(diff.mean()))


def test_a_crop_smaller_than_the_output_is_resized_up():
    """(The earlier device path cut a fixed `size` crop and failed on images smaller than it.)"""
    transform = TrainTransform(crop="rrc", size=64)
    out, plan = on_device(transform, encode(scene(3, 40, 30)), seed=1)
    assert plan[2] <= 40 and plan[3] <= 30 and out.shape == (3, 64, 64)


@pytest.mark.parametrize("w,h,min_side", [(800, 600, 256), (1024, 768, 256), (1000, 700, 100), (513, 257, 128),
                                          (2049, 1537, 200), (300, 200, 100), (600, 300, 200), (90, 70, 40)])
def test_reduced_scale_predicts_pillows_reduced_decode(w, h, min_side):
    f = reduced_scale(w, h, min_side)
    assert decode(encode(scene(1, w, h)), min_side).size == (math.ceil(w / f), math.ceil(h / f))


def test_decode_planned_falls_back_to_the_cpu_and_leaves_out_what_decodes_nowhere():
    from PIL import Image

    good = encode(scene(5, 40, 32))
    cmyk = encode(Image.fromarray(scene(6, 40, 32)).convert("CMYK"))  # torchvision's decoder refuses it
    cut = good[: len(good) // 3]  # its header parses, its data ends early
    transform = TrainTransform(crop="random_crop", size=24)
    plans = torch.tensor([transform.plan(j, random.Random(0)) for j in (good, cmyk, cut)])
    out = torch.zeros(3, 3, 24, 24)
    assert decode_planned([good, cmyk, cut], plans, out) == [2]
    assert torch.allclose(out[0], on_device(transform, good, 0)[0]) and out[1].mean() > 20 and out[2].max() == 0


def loader(shards, decode, share=None, pca=None, mode="uniform", device="cpu") -> ShardLoader:
    ld = ShardLoader(LoaderConfig(shards=shards, mode=mode, batch_size=8, num_workers=2, seed=5, decode=decode),
                     TrainTransform(crop="rrc", size=16, pca=pca), device=device)
    if share is not None:
        ld.share = FixedShare(share)
    return ld


def epoch_batches(shards, decode, share=None, pca=None, mode="uniform") -> list:
    return list(loader(shards, decode, share, pca, mode).epoch(0))


@pytest.mark.parametrize("mode", ["uniform", "class-aware"])
def test_device_and_hybrid_batches_are_the_workers_batches(shards, mode):
    """Whatever the split, the same samples in the same order with the same crops: exactly the
    `decode: device` batches when the device takes all, exactly the workers' when it takes none,
    and within the uint8 resize's rounding of the workers' in between (the share crosses into the
    worker processes: these are 2 DataLoader workers)."""
    workers = epoch_batches(shards, "workers", pca=PCA, mode=mode)
    device = epoch_batches(shards, "device", pca=PCA, mode=mode)
    runs = {share: epoch_batches(shards, "hybrid", share, pca=PCA, mode=mode) for share in (0.0, 0.5, 1.0)}
    one_level = 1.0 / (255 * min(TrainTransform().std))  # a uint8 step, normalised
    for (xw, yw), (xd, yd), *hybrid in zip(workers, device, *runs.values()):
        assert torch.equal(yw, yd) and (xw - xd).abs().max() <= one_level * 1.001
        for x, y in hybrid:
            assert torch.equal(y, yw) and (x - xw).abs().max() <= one_level * 1.001
    assert all(len(r) == len(workers) for r in (device, *runs.values()))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(runs[0.0], workers))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(runs[1.0], device))
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(runs[0.5], workers))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: nvJPEG and the side stream")
def test_on_cuda_the_side_stream_delivers_the_cpu_batches(shards):
    """The GPU's part is decoded on a side stream one batch ahead while the training stream is busy: every
    batch still arrives whole (nvJPEG's pixels differ from libjpeg-turbo's by its rounding alone)."""
    busy = torch.randn(2048, 2048, device="cuda")
    for decode, share in (("device", None), ("hybrid", 0.5)):
        cpu = epoch_batches(shards, decode, share, pca=PCA)
        gpu = []
        for x, y in loader(shards, decode, share, pca=PCA, device="cuda").epoch(0):
            for _ in range(20):  # the training stream's step, queued before the batch is read
                busy = (busy @ busy).tanh_()
            gpu.append((x.clone().cpu(), y.cpu()))
        level = 1.0 / (255 * max(TrainTransform().std))
        assert len(gpu) == len(cpu)
        for (xg, yg), (xc, yc) in zip(gpu, cpu):
            assert torch.equal(yg, yc) and (xg - xc).abs().mean() < 2 * level


def test_the_share_rises_while_training_waits_and_falls_while_batches_are_ready():
    share = DecodeShare()
    assert share.value == 0.0 and share.planned(64) == 0
    share.update(0.0)
    assert share.value == 0.0  # never below 0
    for _ in range(8):
        share.update(0.05)  # training waited 50 ms for its batch: the CPUs fall behind
    assert share.value == 0.5 and share.planned(64) == 32
    for _ in range(100):
        share.update(0.05)
    assert share.value == 1.0 and share.planned(64) == 64
    for _ in range(16):
        share.update(0.0001)  # a batch was ready: give the device's time back to the step, slowly
    assert share.value == 0.75


def test_a_planned_sample_that_does_not_decode_is_left_out_and_counted(tmp_path):
    loc = Location.parse(str(tmp_path))
    jpegs = [encode(scene(i, 24, 24)) for i in range(6)]
    jpegs[4] = jpegs[4][: len(jpegs[4]) // 3]  # header intact, data cut
    built = build_shard([{"__key__": f"s{i}", "cls": b"0", "jpg": j} for i, j in enumerate(jpegs)])
    loc.write_atomic("c0000-00000.tar", built.data)
    shard_index.write_index(loc, [{"url": "c0000-00000.tar", "nsamples": 6, "filesize": len(built.data),
                                   "md5sum": built.md5, "label": 0, "group": "c0000-00000"}], "synthetic", ("a",))
    for decode in ("workers", "device"):
        ld = ShardLoader(LoaderConfig(shards=str(tmp_path), mode="uniform", batch_size=6, num_workers=1,
                                      decode=decode), TrainTransform(crop="rrc", size=16))
        batches = list(ld.epoch(0))
        assert [len(y) for _, y in batches] == [5] and ld.skipped == 1
        state = ld.state_dict()
        list(ld.epoch(1))
        assert ld.skipped == 2  # counted again in the next epoch, not reset
        restored = ShardLoader(ld.cfg, ld.transform)
        restored.load_state_dict(state)
        assert restored.skipped == 1
