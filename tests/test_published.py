"""Published model files as released: the CSAILVision Places365 `.pth.tar` files (a `state_dict`
wrapper with `arch`, `module.`-prefixed keys, densenet161's old key names, no `num_batches_tracked`),
read into our networks for fine-tuning, evaluation and prediction."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import csail_file, encode, scene
from training.checkpoint.contents import read_file
from training.config import load
from training.models import create_model
from training.pretrained import load_pretrained, match, published_as_checkpoint
from training.published import ModelFileError

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


def scored(state: dict, x: torch.Tensor) -> torch.Tensor:
    from training.config import from_dict
    from training.models import build_model

    model = build_model(from_dict(state["config"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        return model.export().eval()(x)


@pytest.mark.parametrize("arch,ours,old_names", [("resnet18", "resnet18", False), ("alexnet", "alexnet_owt", False),
                                                 ("densenet161", "densenet161", True)])
def test_a_published_file_scores_as_torchvision_scores_it(tmp_path, arch, ours, old_names):
    theirs, path = csail_file(tmp_path, arch, old_names=old_names)
    names = [f"/c/class{i}" for i in range(365)]
    state = published_as_checkpoint(read_file(_loc(path)), path, class_names=names)
    assert state["config"]["model"]["name"] == ours and state["config"]["model"]["num_classes"] == 365
    assert state["class_names"] == names and state["published"]
    assert state["summary"].startswith("loaded ") and f"(arch {ours})" in state["summary"]
    loaded, total = state["summary"].split()[1].split("/")
    assert loaded == total
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(scored(state, x), theirs(x), rtol=1e-4, atol=1e-4)


def _loc(path: str):
    from common.storage import Location

    return Location.parse(path)


def test_fine_tuning_from_a_published_file_replaces_the_classifier_and_says_so(tmp_path):
    theirs, path = csail_file(tmp_path, "resnet18")
    model = create_model("resnet18", 10)
    found = match(model.backbone, "resnet18", path)
    assert found.summary == (f"loaded 100/102 tensors from {path} (arch resnet18); classifier replaced: 365 -> 10 "
                             f"classes")
    assert load_pretrained(model, "resnet18", path) == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(model.backbone.stages.layer4[1].body[4].running_var, theirs.layer4[1].bn2.running_var)


def test_published_files_that_are_not_the_network_are_refused_saying_why(tmp_path):
    _, alexnet = csail_file(tmp_path, "alexnet", classes=8)
    with pytest.raises(ModelFileError, match="holds a alexnet_owt network, not model.name's alexnet: set model.name: "
                                             "alexnet_owt"):
        match(create_model("alexnet", 8).backbone, "alexnet", alexnet)
    _, resnet = csail_file(tmp_path, "resnet18", classes=8)
    wide = tmp_path / "wideresnet18_places365.pth.tar"
    file = torch.load(resnet, weights_only=True)
    torch.save({**file, "arch": "wideresnet18"}, wide)
    with pytest.raises(ModelFileError, match="'wideresnet18': the CSAILVision wide ResNet-18 .* is not an architecture "
                                             "of this project"):
        published_as_checkpoint(read_file(_loc(str(wide))), str(wide))
    bare = tmp_path / "resnet18.pt"  # a torchvision state_dict names no network
    torch.save({k.removeprefix("module."): v for k, v in file["state_dict"].items()}, bare)
    with pytest.raises(ModelFileError, match="names no architecture .* give --arch"):
        published_as_checkpoint(read_file(_loc(str(bare))), str(bare))
    assert published_as_checkpoint(read_file(_loc(str(bare))), str(bare), arch="resnet18")["config"]["model"][
        "num_classes"] == 8
    with pytest.raises(ModelFileError, match="holds a resnet18 .*not the --arch densenet161"):
        published_as_checkpoint(read_file(_loc(resnet)), resnet, arch="densenet161")


def test_loose_loading_that_loads_nothing_is_an_error(tmp_path):
    _, vgg = csail_file(tmp_path, "vgg11", classes=8)
    torch.save(torch.load(vgg, weights_only=True)["state_dict"], tmp_path / "bare.pt")  # no arch to refuse by
    nothing = "no tensor of .* but the classifier.s fits resnet18 .* training would start from nothing"
    with pytest.raises(ModelFileError, match=nothing):
        match(create_model("resnet18", 8).backbone, "resnet18", str(tmp_path / "bare.pt"), strict=False)
    _, resnet = csail_file(tmp_path, "resnet18", classes=8)
    head = {k: v for k, v in torch.load(resnet, weights_only=True)["state_dict"].items() if ".fc." in k}
    torch.save(head, tmp_path / "head.pt")  # the classifier alone fits: a backbone from nothing
    with pytest.raises(ModelFileError, match=nothing):
        match(create_model("resnet18", 8).backbone, "resnet18", str(tmp_path / "head.pt"), strict=False)


def test_run_py_names_what_it_loaded_before_ray_starts(tmp_path, capsys):
    """Pre-flight prints what model.pretrained loads; a wrong file stops run.py before Ray starts."""
    from conftest import write_shards
    from training.preflight import check_training_inputs

    write_shards(tmp_path / "train", [2] * 3, shard_samples=2)
    write_shards(tmp_path / "val", [1] * 3, shard_samples=2)
    _, path = csail_file(tmp_path, "resnet18")
    cfg = load(None, [f"data.train_shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}",
                      "model.name=resnet18", "model.num_classes=3", f"model.pretrained={path}"])
    assert check_training_inputs(cfg).pretrained == (f"model.pretrained: loaded 100/102 tensors from {path} (arch resnet18); "
                                          f"classifier replaced: 365 -> 3 classes")


def test_predict_labels_images_with_a_published_model_and_its_categories(tmp_path, capsys):
    from training import predict, prediction

    theirs, path = csail_file(tmp_path, "resnet18", classes=6)
    categories = tmp_path / "categories_places365.txt"
    names = ["/a/airfield", "/a/alley", "/b/bakery/shop", "/b/beach", "/c/canyon", "/d/dorm_room"]
    categories.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"p{i}.jpg").write_bytes(encode(Image.fromarray(scene(i, 300, 256))))
    out = tmp_path / "out"
    argv = ["--checkpoint", path, "--categories", str(categories), str(photos), "--out", str(out)]
    assert predict.main(argv) == 0
    console = capsys.readouterr().out
    assert f"loaded 102/102 tensors from {path} (arch resnet18)" in console
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    model = prediction.Model(path, categories=str(categories))
    for line in lines:  # the release's preprocessing, torchvision's network: the same top-5
        with open(line["image"], "rb") as f:
            view = model.view(f.read())
        with torch.no_grad():
            expected = theirs(model.transform.normalizer()(view[None])).log_softmax(1)[0]
        assert [c for c, _ in line["top"]] == [names[i] for i in expected.argsort(descending=True)[:5].tolist()]
    assert predict.main(["--checkpoint", path, "--categories", str(tmp_path / "none.txt"), str(photos)]) == 2
    assert "--categories: categories file not found" in capsys.readouterr().err
