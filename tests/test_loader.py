"""The rank-level loader: exact epochs through DataLoader workers, exact resume, and the transforms."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import encode, scene, write_shards
from pipelines import color_pca
from pipelines.online import pca_noise
from pipelines.online.catalog import Catalog
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.streams import SequentialStream
from pipelines.online.transforms import ColorPCA, EvalTransform, TrainTransform, decode, decode_uint8

COUNTS = [40, 25, 12, 4]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader_shards")
    write_shards(out, COUNTS, shard_samples=8, size=20)
    return str(out)


def loader(shards, mode, state=None, workers=2, rank=0, world=1, decode="workers"):
    cfg = LoaderConfig(shards=shards, mode=mode, batch_size=7, num_workers=workers, seed=11, buffer_size=10,
                       block=3, decode=decode)
    ld = ShardLoader(cfg, TrainTransform(crop="random_crop", size=16), rank=rank, world_size=world)
    if state is not None:
        ld.load_state_dict(json.loads(json.dumps(state)))
    return ld


def signature(images, labels):
    return labels.tolist(), [round(float(x), 4) for x in images.flatten(1).sum(1)]


def test_uniform_epoch_is_exact_over_two_ranks_with_two_workers(shards):
    total = []
    for rank in range(2):
        ld = loader(shards, "uniform", rank=rank, world=2)
        batches = list(ld.epoch(0))
        assert len(batches) == ld.steps_per_epoch
        assert sum(len(lab) for _, lab in batches) == ld.samples_per_epoch
        total += [int(c) for _, lab in batches for c in lab]
    assert sorted(total) == sorted(c for c, n in enumerate(COUNTS) for _ in range(n))


@pytest.mark.parametrize("decode", ["workers", "device"])  # device: its decoding runs a batch ahead
@pytest.mark.parametrize("mode,cut", [("uniform", 3), ("uniform", 8), ("class-aware", 5), ("class-aware", 14)])
def test_resume_gives_exactly_the_uninterrupted_batches(shards, mode, cut, decode):
    ref = loader(shards, mode, decode=decode)
    reference = [signature(*b) for e in range(2) for b in ref.epoch(e)]
    first = loader(shards, mode, decode=decode)
    got, state = [], None
    for e in range(2):
        for b in first.epoch(e):
            got.append(signature(*b))
            if len(got) == cut:
                state = first.state_dict()
                break
        if state is not None:
            break
    resumed = loader(shards, mode, state=state, decode=decode)
    start_epoch = cut // first.steps_per_epoch if state["epoch"] is None else state["epoch"]
    for e in range(start_epoch, 2):
        got += [signature(*b) for b in resumed.epoch(e)]
    assert got == reference


def test_class_aware_loader_balances_classes(shards):
    ld = loader(shards, "class-aware", workers=1)
    labels = [int(c) for e in range(6) for _, lab in ld.epoch(e) for c in lab]
    counts = np.bincount(labels, minlength=4)
    assert counts.max() - counts.min() <= 1 + len(labels) // 100  # the class list is cycled


def test_train_transforms():
    jpeg = encode(scene(0, 300, 200))
    rng = random.Random(0)
    for crop in ("rrc", "scale_jitter", "random_crop"):
        t = TrainTransform(crop=crop, size=64, jitter=(96, 128))
        x, alphas = t(jpeg, rng)
        assert x.shape == (3, 64, 64) and x.dtype == torch.uint8 and alphas == []
    flipless = TrainTransform(crop="random_crop", size=200, flip=False)
    a, b = flipless(jpeg, random.Random(1))[0], flipless(jpeg, random.Random(1))[0]
    assert torch.equal(a, b)
    plain = flipless.batch_normalizer()(a[None])
    expected = (a.float() / 255 - torch.tensor(flipless.mean).view(3, 1, 1)) / torch.tensor(flipless.std).view(3, 1, 1)
    assert torch.allclose(plain[0], expected, atol=1e-6)
    pca = ColorPCA((0.04, 0.01, 0.001), ((0.58, 0.58, 0.58), (0.7, 0.0, -0.7), (0.4, -0.8, 0.4)))
    noisy_t = TrainTransform(crop="random_crop", size=200, flip=False, pca=pca)
    crop, alphas = noisy_t(jpeg, random.Random(1))
    assert torch.equal(crop, a) and len(alphas) == 3
    noisy = noisy_t.batch_normalizer()(crop[None], torch.tensor([alphas]))
    shift = ((noisy - plain)[0] * torch.tensor(flipless.std).view(3, 1, 1)).flatten(1)  # back to [0, 1] units
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5) and shift.abs().max() > 0
    # the paper's sum_i p_i * alpha_i * lambda_i, lambda of [0, 1] pixels
    expected_shift = (torch.tensor(alphas) * torch.tensor(pca.eigenvalues)) @ torch.tensor(pca.eigenvectors)
    assert torch.allclose(shift[:, 0], expected_shift, atol=1e-5)
    spread = ColorPCA(pca.eigenvalues, pca.eigenvectors, scale="spread")  # alpha_i * sqrt(lambda_i)
    expected_spread = (torch.tensor(alphas) * torch.tensor(pca.eigenvalues).sqrt()) @ torch.tensor(pca.eigenvectors)
    assert torch.allclose(spread.shift(torch.tensor([alphas]))[0], expected_spread, atol=1e-6)
    with pytest.raises(ValueError, match="scale must be eigenvalue or spread"):
        ColorPCA(pca.eigenvalues, pca.eigenvectors, scale="sqrt")


@pytest.mark.parametrize("protocol,views,shape", [("center", 1, (224, 224)), ("ten_crop", 10, (224, 224)),
                                                  ("full", 1, (256, 384)), ("multi_view", 20, (224, 224))])
def test_eval_protocols(protocol, views, shape):
    t = EvalTransform(protocol=protocol, scales=(256, 320) if protocol == "multi_view" else (256,))
    out = t(encode(scene(1, 384, 256)))
    assert out.shape == (views, 3, *shape)
    if protocol == "ten_crop":
        assert torch.allclose(out[5], out[0].flip(-1))  # the flipped top-left corner


def test_vgg_multi_crop_is_a_5x5_grid_and_its_mirrors_per_scale():
    from pipelines.online.transforms import grid_crops, resize_shorter, to_uint8

    jpeg = encode(scene(3, 300, 200))
    out = EvalTransform("multi_crop", size=64, scales=(96, 128))(jpeg)
    assert out.shape == (100, 3, 64, 64)
    img = resize_shorter(decode(jpeg), 96)  # 144 x 96: x steps of 20, y steps of 8
    crops = grid_crops(img, 64)
    assert [c.size for c in crops] == [(64, 64)] * 50
    assert torch.equal(to_uint8(crops[6]), to_uint8(img.crop((20, 8, 84, 72))))  # row 1, column 1
    assert torch.equal(to_uint8(crops[24]), to_uint8(img.crop((80, 32, 144, 96))))  # the bottom-right one
    assert torch.equal(to_uint8(crops[25 + 6]), to_uint8(crops[6]).flip(-1))


@pytest.mark.parametrize("w,h", [(300, 200), (200, 300)])
def test_googlenet_144_crops(w, h):
    """4 scales x 3 squares (left/center/right, or top/center/bottom) x (4 corners, center, the square
    resized) x 2 mirrors."""
    from pipelines.online.transforms import googlenet_crops, resize_shorter, to_uint8

    jpeg = encode(scene(4, w, h))
    assert EvalTransform("googlenet_144", size=32, scales=(48, 56, 64, 72))(jpeg).shape == (144, 3, 32, 32)
    img = resize_shorter(decode(jpeg), 48)  # 72 x 48 or 48 x 72
    crops = googlenet_crops(img, 32)
    assert len(crops) == 36
    last_square = img.crop((24, 0, 72, 48) if w > h else (0, 24, 48, 72))
    assert torch.equal(to_uint8(crops[12]), to_uint8(last_square.crop((0, 0, 32, 32))))  # its top-left corner
    assert torch.equal(to_uint8(crops[17]), to_uint8(last_square.resize((32, 32), Image.Resampling.BILINEAR)))
    assert torch.equal(to_uint8(crops[18 + 17]), to_uint8(crops[17]).flip(-1))


def test_reduced_size_decoding():
    big = encode(scene(2, 1024, 768))
    assert decode(big).size == (1024, 768)
    assert decode(big, min_side=256).size == (512, 384)  # 1/2 is the smallest DCT scale keeping 768 >= 256


@pytest.mark.parametrize("decode", ["workers", "device", "hybrid"])
def test_loader_decoding_on_the_device_covers_the_same_epoch(shards, decode):
    cfg = LoaderConfig(shards=shards, mode="uniform", batch_size=7, num_workers=2, seed=11, decode=decode)
    ld = ShardLoader(cfg, TrainTransform(crop="random_crop", size=16), device="cpu")
    batches = list(ld.epoch(0))
    assert all(x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 for x, _ in batches)
    assert sorted(int(c) for _, lab in batches for c in lab) == sorted(c for c, n in enumerate(COUNTS) for _ in range(n))


def test_color_pca_step(shards):
    assert color_pca.main(["--shards", shards, "--images", "50"]) == 0
    pca = pca_noise.load(shards)
    values = np.array(pca.eigenvalues)
    vectors = np.array(pca.eigenvectors)
    assert (np.diff(values) <= 0).all() and values[-1] >= 0
    assert np.allclose(vectors @ vectors.T, np.eye(3), atol=1e-9)
    assert json.loads((Catalog.load(shards).loc.read_bytes("color_pca.json")))["images"] == 50
    from training.config import load
    from training.train_input import train_transform

    for scale in ("eigenvalue", "spread"):  # data.color_pca_scale reaches the training transform
        cfg = load(None, [f"data.train_shards={shards}", "data.color_pca=true", f"data.color_pca_scale={scale}"])
        pca = train_transform(cfg).pca
        assert pca == pca_noise.load(shards, scale=scale) and pca.scale == scale


def test_decode_paths_agree():
    from PIL import Image as PILImage

    from pipelines.online.transforms import decode_uint8, jpeg_size

    arr = scene(3, 96, 64)
    jpeg = encode(arr)
    assert jpeg_size(jpeg) == (96, 64) and jpeg_size(encode(arr, "PNG")) is None
    fast = decode_uint8(jpeg)  # libjpeg-turbo through torchvision
    slow = torch.from_numpy(np.array(PILImage.open(io.BytesIO(jpeg)).convert("RGB"))).permute(2, 0, 1)
    assert fast.shape == (3, 64, 96) and (fast.int() - slow.int()).abs().max() <= 2
    assert decode_uint8(encode(arr, "PNG")).shape == (3, 64, 96)  # not a JPEG: Pillow
    cmyk = encode(PILImage.fromarray(arr).convert("CMYK"))
    assert decode_uint8(cmyk).shape == (3, 64, 96)  # CMYK: Pillow too
    big = encode(scene(4, 800, 600))
    assert decode_uint8(big, min_side=256).shape == (3, 300, 400)  # reduced-DCT decode


def test_resize_box_is_the_plain_antialiased_resize_of_the_box():
    from pipelines.online.transforms import resize_box

    x = decode_uint8(encode(scene(5, 90, 70)))
    for box in [(0, 0, 90, 70), (7, 3, 50, 61), (40, 10, 41, 12)]:
        x0, y0, x1, y1 = box
        reference = torch.nn.functional.interpolate(x[None, :, y0:y1, x0:x1].contiguous(), size=(32, 24),
                                                    mode="bilinear", antialias=True)[0]
        assert torch.equal(resize_box(x, box, (32, 24)), reference)
    assert torch.equal(resize_box(x, (10, 20, 34, 52), (32, 24)), x[:, 20:52, 10:34])  # already the size


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_channels_last_batches_hold_the_same_values(shards, decode):
    def batches(channels_last):
        cfg = LoaderConfig(shards=shards, mode="uniform", batch_size=7, num_workers=2, seed=11, decode=decode)
        return list(ShardLoader(cfg, TrainTransform(crop="rrc", size=16), channels_last=channels_last).epoch(0))

    plain, last = batches(False), batches(True)
    assert len(plain) == len(last)
    for (a, la), (b, lb) in zip(plain, last):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 2)])
def test_eval_batches_cover_the_split_once_over_ranks_and_workers(shards, world, workers):
    from pipelines.online.loader import eval_batches

    transform = EvalTransform("center", size=16, resize=18)
    labels, sums = [], []
    for rank in range(world):
        for x, y in eval_batches(shards, transform, rank, world, batch_size=5, num_workers=workers):
            assert x.shape == (len(y), 3, 16, 16) and len(y) <= 5
            assert x.dtype == torch.uint8  # normalised on the device, by transform.normalizer()
            labels += y.tolist()
            sums += x.flatten(1).sum(1).tolist()
    assert sorted(labels) == sorted(c for c, n in enumerate(COUNTS) for _ in range(n))
    direct = [int(transform.views(d.members["jpg"]).sum()) for d in SequentialStream(Catalog.load(shards))]
    assert sorted(sums) == sorted(direct)  # every image exactly once


def test_eval_batches_flatten_each_images_views(shards):
    from pipelines.online.loader import eval_batches

    x, y = next(iter(eval_batches(shards, EvalTransform("ten_crop", size=16, resize=18), batch_size=3,
                                  num_workers=0)))
    assert x.shape == (30, 3, 16, 16) and len(y) == 3


def test_googlenet_144_crops_of_a_square_image_are_48_views_three_times_each():
    """A square image has one square, not three: each of its 48 distinct views (4 scales x 6 crops x 2
    mirrors) comes three times, so the 144's average is the 48's.  The GoogLeNet recipe validates on
    shards that keep the aspect (configs/shard/places365_val.yaml: resize shorter), where there are 144."""
    import yaml

    from conftest import ROOT

    views = EvalTransform("googlenet_144", size=32, scales=(48, 56, 64, 72))(encode(scene(4, 200, 200)))
    flat = views.reshape(144, -1)
    distinct = torch.unique(flat, dim=0)
    assert views.shape == (144, 3, 32, 32) and len(distinct) == 48
    assert all(int((flat == row).all(1).sum()) == 3 for row in distinct)
    recipe = yaml.safe_load(open(f"{ROOT}/configs/train/googlenet.yaml"))
    shard = yaml.safe_load(open(f"{ROOT}/configs/shard/places365_val.yaml"))
    assert recipe["data"]["val_shards"] == shard["out"].split("#")[0].strip() and shard["resize"] == "shorter"
