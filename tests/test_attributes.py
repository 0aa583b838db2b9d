"""Scene attributes: the file forms, the join into the shards with its accounting, and the `attr` member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from conftest import encode, scene
from pipelines import shard
from pipelines.offline.attributes import MISSING, decode, join, parse_row, read_attribute_file
from pipelines.offline.corpus import CorpusError

NAMES = ("water", "snow", "night")


def table(tmp_path, text: str, name: str = "attrs.csv", threshold: float = 0.5):
    (tmp_path / name).write_text(text)
    return read_attribute_file(str(tmp_path / name), threshold)


def test_csv_rows_become_bits_at_the_vote_threshold(tmp_path):
    t = table(tmp_path, "path,water,snow,night\n\na/1.jpg,1,0,0.66\n/a/2.jpg,0.33,1,0\n")
    assert (t.form, t.names, t.rows) == ("csv", NAMES, 2)
    assert parse_row("a/1.jpg,1,0,0.66", t) == ("a/1.jpg", "101", "")
    assert parse_row("a/2.jpg,0.33,1,0", t) == ("a/2.jpg", "010", "")
    assert parse_row('"a/with, comma.jpg",0,0,1', t) == ("a/with, comma.jpg", "001", "")
    assert parse_row("   ", t) is None
    strict = table(tmp_path, "path,water,snow,night\n", "strict.csv", threshold=1.0)
    assert parse_row("a/1.jpg,1,0,0.66", strict)[1] == "100"


@pytest.mark.parametrize("line,problem", [
    ("a/1.jpg,1,0", "2 values for 3 attributes"),
    ("a/1.jpg,1,0,yes", "night = 'yes' is not a number in [0, 1]"),
    ("a/1.jpg,1,0,2", "night = '2' is not a number in [0, 1]"),
    ("a/1.jpg,1,nan,0", "snow = 'nan' is not a number in [0, 1]"),
])
def test_a_malformed_csv_row_is_named(tmp_path, line, problem):
    t = table(tmp_path, "path,water,snow,night\n")
    assert parse_row(line, t) == ("a/1.jpg", "", problem)


def test_json_lines_take_the_first_rows_names(tmp_path):
    rows = [{"path": "a/1.jpg", "attributes": {"water": 1, "snow": 0, "night": 0.7}},
            {"path": "a/2.jpg", "attributes": {"night": 0, "water": 0, "snow": 1}}]
    t = table(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "attrs.jsonl")
    assert (t.form, t.names, t.rows) == ("jsonl", NAMES, 2)
    assert [parse_row(json.dumps(r), t)[1] for r in rows] == ["101", "010"]
    assert parse_row('{"path": "a/3.jpg", "attributes": {"water": 1}}', t)[2] == \
        "attribute names differ from the first row's: night, snow"
    assert parse_row('{"path": "a/3.jpg", "attributes": {"water": true, "snow": 0, "night": 0}}', t)[2] == \
        "water = True is not a number in [0, 1]"
    assert parse_row("{oops", t)[2].startswith("not JSON")


@pytest.mark.parametrize("text,message", [
    ("", "--attributes file is empty"),
    ("path\n", "the CSV header must be path,attribute1,attribute2,..."),
    ("path,water,water\n", "attribute 'water' is named twice"),
    ('{"path": "a.jpg"}\n', 'the first JSON row must be'),
])
def test_a_file_that_is_no_attribute_table_is_refused(tmp_path, text, message):
    with pytest.raises(CorpusError, match=message.replace("(", r"\(").replace(".", r"\.").replace("[", r"\[")):
        table(tmp_path, text)


def test_a_latin1_attribute_file_is_refused_with_its_line(tmp_path):
    (tmp_path / "a.csv").write_bytes("path,water\ncaf\u00e9.jpg,1\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"a\.csv:2: not UTF-8 text"):
        read_attribute_file(str(tmp_path / "a.csv"), 0.5)


def test_join_quarantines_what_has_no_usable_row():
    entries = [{"path": p, "source": p, "label": 0} for p in ("a/1.jpg", "a/2.jpg", "a/3.jpg", "a/4.jpg")]
    rows = [{"path": "a/1.jpg", "attr": "101", "problem": ""}, {"path": "a/1.jpg", "attr": "101", "problem": ""},
            {"path": "a/2.jpg", "attr": "", "problem": "2 values for 3 attributes"},
            {"path": "a/3.jpg", "attr": "100", "problem": ""}, {"path": "a/3.jpg", "attr": "110", "problem": ""}]
    kept, rejected = join(entries, rows, "attrs.csv", keep_without=False)
    assert [(e["path"], e["attr"]) for e in kept] == [("a/1.jpg", "101")]
    assert [(e["path"], reason) for e, reason in rejected] == [
        ("a/2.jpg", "malformed_attributes: the attrs.csv row for a/2.jpg: 2 values for 3 attributes"),
        ("a/3.jpg", "conflicting_attributes: attrs.csv has 2 different rows for a/3.jpg"),
        ("a/4.jpg", "missing_attributes: no row for a/4.jpg in attrs.csv")]
    kept, rejected = join(entries, rows, "attrs.csv", keep_without=True)
    assert [(e["path"], e["attr"]) for e in kept] == [("a/1.jpg", "101"), ("a/4.jpg", "")]


def test_attr_member_decodes_to_bits_or_missing():
    assert decode(b"0110", 4).tolist() == [0, 1, 1, 0]
    assert decode(None, 3).tolist() == [MISSING] * 3
    with pytest.raises(ValueError, match="not 3 '0'/'1' characters"):
        decode(b"0120", 3)


# -- through Ray Data ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attribute_corpus(tmp_path_factory):
    """Two classes of 4 images; attribute rows for most: one missing, one malformed, one given twice
    alike, one given twice differently, and a row for an image that does not exist."""
    root = tmp_path_factory.mktemp("attr_corpus")
    tree = root / "tree"
    for c, name in enumerate(("beach", "forest")):
        (tree / name).mkdir(parents=True)
        for i in range(4):
            (tree / name / f"{i}.jpg").write_bytes(encode(scene(10 * c + i, 48, 48)))
    rows = {f"{name}/{i}.jpg": f"{(i + c) % 2},{c},{i % 2}" for c, name in enumerate(("beach", "forest"))
            for i in range(4)}
    lines = ["path,water,snow,night"]
    for path, values in rows.items():
        if path == "beach/3.jpg":
            continue  # missing
        if path == "forest/2.jpg":
            values = "1,1"  # malformed
        lines.append(f"{path},{values}")
    lines += ["beach/0.jpg," + rows["beach/0.jpg"],  # again, alike
              "forest/3.jpg,0,0,0",  # again, differently
              "nowhere/9.jpg,1,1,1"]  # no such image
    (root / "attrs.csv").write_text("\n".join(lines) + "\n")
    expected = {p: v.replace(",", "") for p, v in rows.items() if p not in ("beach/3.jpg", "forest/2.jpg",
                                                                            "forest/3.jpg")}
    return root, expected


def shard_samples(out) -> dict[str, dict]:
    tars = sorted(str(p) for p in out.glob("*.tar"))
    return {json.loads(s["json"])["source"]: s for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)}


def test_attributes_are_joined_into_the_shards_and_every_image_accounted_for(ray_cluster, attribute_corpus, tmp_path):
    root, expected = attribute_corpus
    out = tmp_path / "out"
    assert shard.main(["--image-folder", str(root / "tree"), "--out", str(out), "--attributes",
                       str(root / "attrs.csv"), "--shard-samples", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["entries_read"], manifest["written"]) == (8, 5)
    assert manifest["quarantine_reasons"] == {"conflicting_attributes": 1, "malformed_attributes": 1,
                                              "missing_attributes": 1}
    assert manifest["attributes"] == {"names": 3, "rows": 10, "written_with_attributes": 5}
    assert json.loads((out / "index.json").read_text())["attribute_names"] == list(NAMES)
    samples = shard_samples(out)
    assert {source: s["attr"].decode() for source, s in samples.items()} == expected
    quarantine = {json.loads(ln)["source"]: json.loads(ln)["reason"]
                  for ln in (out / "quarantine.jsonl").read_text().splitlines()}
    assert quarantine["beach/3.jpg"] == "missing_attributes: no row for beach/3.jpg in attrs.csv"
    assert quarantine["forest/2.jpg"].startswith("malformed_attributes: the attrs.csv row for forest/2.jpg: 2 values")

    kept = tmp_path / "kept"
    assert shard.main(["--image-folder", str(root / "tree"), "--out", str(kept), "--attributes",
                       str(root / "attrs.csv"), "--shard-samples", "3", "--keep-without-attributes"]) == 0
    samples = shard_samples(kept)
    assert "attr" not in samples["beach/3.jpg"] and samples["beach/1.jpg"]["attr"].decode() == expected["beach/1.jpg"]
    assert json.loads((kept / "manifest.json").read_text())["written"] == 6
    (tmp_path / "plain").mkdir()
    assert shard.main(["--image-folder", str(root / "tree"), "--out", str(tmp_path / "plain")]) == 0
    assert "attribute_names" not in json.loads((tmp_path / "plain" / "index.json").read_text())
    assert not any("attr" in s for s in shard_samples(tmp_path / "plain").values())



# -- the head, its loss and the metrics ----------------------------------------------------------------
def test_attribute_loss_ignores_missing_labels_and_trains_only_its_head_on_top():
    import torch
    import torch.nn.functional as F

    from training.models import create_model

    torch.manual_seed(0)
    model = create_model("simple_net", 4, num_attributes=3, mode="bp", attribute_weight=0.5).train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([[1, 0, 1, MISSING], [2, MISSING, MISSING, MISSING]])
    out = model(x, y)
    logits = out["attr_logits"]
    labelled = [(0, 0, 0.0), (0, 1, 1.0)]
    expected = sum(F.binary_cross_entropy_with_logits(logits[i, a], torch.tensor(t)) for i, a, t in labelled) / 2
    assert torch.allclose(out["loss_attr"], expected)
    assert torch.allclose(out["loss"], out["loss1"] + 0.5 * out["loss_attr"])
    out["loss_attr"].backward()
    grad = model.attribute_head.fc.weight.grad
    assert grad[2].abs().sum() == 0 and grad[:2].abs().sum() > 0  # attribute 2 has no label in the batch
    assert model.backbone.head.fc.weight.grad is None  # the attribute loss never reaches the scene classifier
    scene, attributes = model.eval().predict(x)
    assert scene.shape == (2, 4) and attributes.shape == (2, 3)
    assert torch.equal(scene, model(x))


def test_attributes_alone_train_no_scene_loss():
    import torch

    from training.models import create_model

    model = create_model("simple_net", 4, num_attributes=2, scene_weight=0.0).train()
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([[0, 1, 0], [1, 0, 1]]))
    assert torch.allclose(out["loss"], out["loss_attr"])


def brute_force_ap(scores, targets) -> float:
    """The textbook definition, for untied scores: the mean over positives of the precision at their rank."""
    order = np.argsort(-scores)
    hits = targets[order] == 1
    return float(np.mean([hits[:k + 1].mean() for k in np.nonzero(hits)[0]]))


def test_average_precision_matches_its_definition_and_skips_missing():
    from training.attribute_metrics import average_precision, best_f1_threshold, f1_at

    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, targets = rng.random(50), (rng.random(50) < 0.3).astype(np.int8)
        targets[0] = 1
        assert average_precision(scores, targets) == pytest.approx(brute_force_ap(scores, targets))
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([1, MISSING, 0, 1, 0])
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.array([0, 0, MISSING, 0, 0])))
    assert best_f1_threshold(scores, targets) == 0.6  # all positives in, one negative: F1 0.8
    assert f1_at(scores, targets, 0.6) == pytest.approx(0.8)
    assert f1_at(scores, targets, 0.95) == 0.0


def test_attribute_report_chooses_thresholds_once_and_applies_them_elsewhere():
    from training.attribute_metrics import attribute_report

    val_scores = np.array([[0.9, 0.2], [0.4, 0.8], [0.3, 0.1]])
    val_targets = np.array([[1, 0], [0, 1], [0, MISSING]])
    chosen = attribute_report(val_scores, val_targets, ["water", "snow"])
    assert chosen["thresholds"] == [0.9, 0.8] and chosen["mAP"] == 1.0 and chosen["macro_f1"] == 1.0
    test = attribute_report(np.array([[0.85, 0.9]]), np.array([[1, 1]]), ["water", "snow"], chosen["thresholds"])
    assert test["per_attribute"]["water"]["f1"] == 0.0 and test["per_attribute"]["snow"]["f1"] == 1.0
    assert test["per_attribute"]["snow"] == {"ap": 1.0, "threshold": 0.8, "f1": 1.0, "positives": 1, "labelled": 1}


# -- training, evaluation and predict.py ----------------------------------------------------------------
@pytest.mark.slow
def test_attributes_train_validate_evaluate_and_predict(ray_cluster, tmp_path, capsys):
    """Under Ray Train the attribute head trains beside the scene head; validation reports the attributes'
    mAP and chooses their F1 thresholds, which the checkpoint keeps; evaluate.py with the training's view
    reproduces that mAP and macro F1; predict.py lists the attributes above their thresholds."""
    from conftest import write_shards
    from training import evaluate, predict, run
    from training.checkpoint import contents

    write_shards(tmp_path / "train", [16, 12, 8], shard_samples=8, size=32, attributes=3)
    write_shards(tmp_path / "val", [6, 6, 6], shard_samples=6, size=32, attributes=3)
    write_shards(tmp_path / "plain", [6, 6, 6], shard_samples=6, size=32)
    common = ["--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
              "--set", f"run.storage_path={tmp_path}/runs", "--set", "run.workers=1", "--set", "model.num_classes=3",
              "--set", "model.mode=bp", "--set", "data.size=32", "--set", "data.eval_resize=36",
              "--set", "data.batch_size=8", "--set", "model.num_attributes=3"]
    assert run.main([*common, "--set", "run.epochs=2", "--set", "run.name=attr"]) == 0
    report = json.loads((tmp_path / "runs" / "attr" / "report.json").read_text())
    assert all(0 < h["attr_mAP"] <= 1 and h["loss_attr"] > 0 for h in report["history"])
    assert "attributes mAP" in capsys.readouterr().out
    state = contents.load(report["best_checkpoint"])
    best = report["history"][state["epoch"]]  # evaluate.py scores the run's best checkpoint
    assert state["attributes"]["names"] == ["attr0", "attr1", "attr2"] and len(state["attributes"]["thresholds"]) == 3

    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "attr"), "--shards", str(tmp_path / "val"),
                          "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["attributes"]
    assert metrics["mAP"] == pytest.approx(best["attr_mAP"], abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx(best["attr_macro_f1"], abs=1e-6)
    assert metrics["thresholds"] == state["attributes"]["thresholds"]
    assert set(metrics["per_attribute"]) == {"attr0", "attr1", "attr2"}
    assert (out / "attribute_ap.png").read_bytes()[:4] == b"\x89PNG"
    assert "attributes: mAP" in capsys.readouterr().out
    # shards without attributes: scenes are scored, attributes are not
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "attr"), "--shards", str(tmp_path / "plain"),
                          "--out", str(tmp_path / "eval_plain")]) == 0
    assert "attributes" not in json.loads((tmp_path / "eval_plain" / "metrics.json").read_text())
    assert run.main([*common, "--set", "run.epochs=1", "--set", "run.name=typo", "--set",
                     "model.num_attributes=4"]) == 2
    assert "'model.num_attributes' is 4 but data.train_shards has 3 attributes" in capsys.readouterr().err

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        (images / f"{i}.jpg").write_bytes(encode(scene(i, 40, 40)))
    assert predict.main(["--checkpoint", str(tmp_path / "runs" / "attr"), str(images),
                         "--out", str(tmp_path / "pred")]) == 0
    records = [json.loads(ln) for ln in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("attributes" in r for r in records)
    thresholds = dict(zip(state["attributes"]["names"], state["attributes"]["thresholds"]))
    assert all(p >= thresholds[n] for r in records for n, p in r["attributes"])
