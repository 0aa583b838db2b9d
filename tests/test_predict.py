"""predict.py and class activation maps: CAM's exact relation to the logits, Grad-CAM, odd image files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import odd_files
from training.cam import activation_map, class_scores, raw_cam
from training.models import create_model


def test_cam_averages_to_the_class_logit_and_grad_cam_coincides_with_it():
    torch.manual_seed(0)
    backbone = create_model("resnet18", 7).export().eval()
    logits, features = class_scores(backbone, torch.rand(2, 3, 64, 64))
    for cls in (0, 3, 6):
        cam = raw_cam(backbone, features, logits, cls, "cam")
        torch.testing.assert_close(cam.mean((1, 2)) + backbone.head.fc.bias[cls], logits[:, cls].detach())
        gradcam = raw_cam(backbone, features, logits, cls, "gradcam")  # grad = weight / (h * w)
        torch.testing.assert_close(gradcam * features.shape[2] * features.shape[3], cam, rtol=1e-4, atol=1e-5)


def test_grad_cam_on_fully_connected_heads_weights_channels_by_their_mean_gradient():
    torch.manual_seed(0)
    backbone = create_model("vgg_a", 4, input_size=128).export().eval()
    x = torch.rand(1, 3, 128, 128)
    logits, features = class_scores(backbone, x)
    cls = int(logits.argmax())
    direct = torch.autograd.functional.jacobian(lambda f: backbone.forward_head(f)[0, cls], features.detach())
    expected = (direct.mean((2, 3), keepdim=True) * features.detach()).sum(1)
    torch.testing.assert_close(raw_cam(backbone, features, logits, cls), expected)
    cam = activation_map(backbone, features, logits, cls, (128, 128))
    assert cam.shape == (128, 128) and cam.min() == 0 and cam.max() == pytest.approx(1)


def checkpoint(tmp_path, names):
    from training.config import load, to_dict

    cfg = load(None, ["model.num_classes=%d" % len(names), "data.size=32", "data.eval_resize=36"])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, len(names), mode=cfg.model.mode)
    path = tmp_path / "state.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "ema": None, "class_names": names,
                "history": []}, path)
    return str(path)


def test_predict_scores_every_readable_image_and_names_each_bad_one(tmp_path, capsys):
    from training import predict

    names = [f"/x/scene{i}" for i in range(6)]
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    files = odd_files(64)
    for name, data in files.items():
        (folder / ("nested" if "png" in name else "") / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image, and not looked at")
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", checkpoint(tmp_path, names), str(folder), "--out", str(out), "--top", "3"]) == 1
    console = capsys.readouterr()
    bad = sorted(n for n in files if n in ("bad_empty.jpg", "bad_truncated.jpg", "bad_html.jpg", "bad_cut_closed.jpg",
                                           "bad_claims_9000.jpg"))
    assert sorted(line.split(":")[0].rsplit("/", 1)[1] for line in console.err.splitlines()) == bad
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(files) - len(bad) and f"{len(lines)} of {len(files)} images scored" in console.out
    for line in lines:
        assert [c for c, _ in line["top"]] and all(c in names for c, _ in line["top"]) and len(line["top"]) == 3
        probs = [p for _, p in line["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        with Image.open(out / line["cam"]) as png:
            assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    assert len({line["cam"] for line in lines}) == len(lines)


def test_predict_refuses_what_it_cannot_start_with(tmp_path, capsys):
    from training import predict

    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main(["--checkpoint", str(tmp_path / "none.pt"), str(empty)]) == 2
    assert "no image files in" in capsys.readouterr().err
    (empty / "a.jpg").write_bytes(odd_files(64)["ok_baseline.jpg"])
    assert predict.main(["--checkpoint", str(tmp_path / "none.pt"), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    ckpt = checkpoint(tmp_path, ["a", "b"])
    assert predict.main(["--checkpoint", ckpt, str(empty), "--out", str(tmp_path / "o"), "--method", "gradcam"]) == 0
    line = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert sorted(c for c, _ in line["top"]) == ["a", "b"]  # the checkpoint's class names, --top cut at 2
