"""Bad input, as a hostile-but-realistic user gives it: refused before any work with exit code 2 and one line
naming the setting or file, and nothing outside the output folder touched.  One row per case."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess

import pytest
import torch

from conftest import write_shards
from pipelines import shard
from pipelines.offline import sharding
from pipelines.offline.corpus import LISTED, Categories, parse_line
from refusals import check_refused, files_under
from training import evaluation
from training.config import load, to_dict
from training.models import build_model
from training.train_loop import check_epoch_input

COUNTS = [6, 5, 4]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Training and validation shards of 3 classes, a 3-class checkpoint, a base config using them."""
    root = tmp_path_factory.mktemp("bad")
    write_shards(root / "train", COUNTS, shard_samples=4)
    write_shards(root / "val", [2, 2, 2], shard_samples=2)
    write_shards(root / "val5", [2] * 5, shard_samples=2)
    write_shards(root / "val_two", [2, 2], shard_samples=2)  # an image-folder val tree missing one class
    renamed = root / "val_renamed"
    write_shards(renamed, [2, 2, 2], shard_samples=2)
    index = json.loads((renamed / "index.json").read_text())
    index["class_names"] = ["class0", "class2", "class1"]
    (renamed / "index.json").write_text(json.dumps(index))
    gone = root / "train_gone"
    write_shards(gone, COUNTS, shard_samples=4)
    for tar in gone.glob("*.tar"):
        tar.unlink()
    for name, url in (("escape_abs", "/etc/passwd"), ("escape_up", "../train/c0000-00000.tar")):
        write_shards(root / name, [2], shard_samples=2)
        index = json.loads((root / name / "index.json").read_text())
        index["shardlist"][0]["url"] = url
        (root / name / "index.json").write_text(json.dumps(index))
    (root / "not_index").mkdir()
    (root / "not_index" / "index.json").write_text("[]")
    cfg = load(None, ["model.num_classes=3", "model.mode=bp", f"data.train_shards={root / 'train'}",
                      f"data.val_shards={root / 'val'}"])
    checkpoint = root / "model3.pt"
    torch.save({"model": build_model(cfg).state_dict(), "config": to_dict(cfg), "history": [],
                "class_names": ["class0", "class1", "class2"]}, checkpoint)
    (root / "base.yaml").write_text(json.dumps(to_dict(cfg)))  # JSON is YAML
    (root / "list.yaml").write_text("- data\n- model\n")
    (root / "data5.yaml").write_text("data: 5\n")
    (root / "space.yaml").write_text("params:\n  optim.lr: {loguniform: [0.01, 0.1]}\n")
    (root / "space_val.yaml").write_text(f"params:\n  data.val_shards: {{choice: [{root / 'val'}, {root / 'val5'}]}}\n")
    (root / "space_option.yaml").write_text("params:\n  model.options.widht: {choice: [64, 96]}\n")
    (root / "recipe_typo.yaml").write_text("image_size: big\n")
    (root / "snapshot.json").write_text('{"checkpoints": []}')
    tree = root / "tree"  # a class-per-folder corpus
    for name in ("beach", "forest"):
        (tree / name).mkdir(parents=True)
        (tree / name / "0.jpg").write_bytes(b"not decoded before the refusal")
    busy = root / "busy_out" / ".state"  # an OUT another shard.py (alive: this test's own process) writes to
    busy.mkdir(parents=True)
    (busy / "lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "earlier"}))
    lists = root / "lists"  # list files that are not UTF-8 text
    (lists / "images").mkdir(parents=True)
    (lists / "cats.txt").write_text("beach\nforest\n")
    (lists / "cats_latin.txt").write_bytes("beach\ncaf\u00e9\n".encode("latin-1"))
    (lists / "latin.txt").write_bytes("beach/a.jpg 0\nforest/caf\u00e9.jpg 1\n".encode("latin-1"))
    (lists / "list.txt.gz").write_bytes(gzip.compress(b"beach/a.jpg 0\n"))
    (lists / "photo.txt").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01")
    (lists / "testlist.txt").write_text("beach/a.jpg\nvolcano/b.jpg\n")  # UCF-101's form: the folder is the label
    (lists / "multi.txt").write_text("beach/a.jpg 0\nforest/b.jpg 0,1\n")
    (lists / "cats_from2.txt").write_text("2 beach\n3 forest\n")
    (lists / "attributes.csv").write_text("path,sunny\nbeach/a.jpg,1\n")
    multi = root / "train_multi_label"  # shards whose samples may carry several classes
    write_shards(multi, COUNTS, shard_samples=4)
    index = json.loads((multi / "index.json").read_text())
    (multi / "index.json").write_text(json.dumps({**index, "multi_label": True}))
    (root / "users_folder").mkdir()
    (root / "users_folder" / "index.json").write_text('{"mine": true}')
    return root


def shard_list(listed: str, categories: str = "cats.txt", *extra: str) -> list[str]:
    """shard.py's argv for a list and a categories file of the module's `lists` folder."""
    return ["--list", f"{{root}}/lists/{listed}", "--images-root", "{root}/lists/images", "--categories",
            f"{{root}}/lists/{categories}", *extra, "--out", "{out}"]


# (row, tool, argv with {root} for the module's folder, the message the one error line must hold)
CASES = [
    ("batch_size -1 (it hung, growing memory)", "run", ["--config", "{root}/base.yaml", "--set", "data.batch_size=-1"],
     "config key 'data.batch_size' must be >= 1, got -1"),
    ("zero epochs", "run", ["--config", "{root}/base.yaml", "--set", "run.epochs=0"],
     "config key 'run.epochs' must be >= 1, got 0"),
    ("an unknown ingest", "run", ["--config", "{root}/base.yaml", "--set", "data.ingest=dali"],
     "config key 'data.ingest' must be one of loader, ray_data"),
    ("device decoding with ray_data ingest", "run", ["--config", "{root}/base.yaml", "--set", "data.ingest=ray_data",
                                                      "--set", "data.decode=device"],
     "config key 'data.decode': device decoding runs in the training worker's own loader"),
    ("negative loader workers", "run", ["--config", "{root}/base.yaml", "--set", "data.loader_workers=-2"],
     "config key 'data.loader_workers' must be >= 0"),
    ("unknown model", "run", ["--config", "{root}/base.yaml", "--set", "model.name=resnet9000"],
     "config key 'model.name': unknown model 'resnet9000'"),
    ("a video network on image shards", "run", ["--config", "{root}/base.yaml", "--set", "model.name=video_slow_fusion"],
     "config key 'model.name': video_slow_fusion is a video network (clips of 10 frames)"),
    ("a YAML list as config", "run", ["--config", "{root}/list.yaml"],
     "list.yaml: expected a mapping of sections"),
    ("data: 5", "run", ["--config", "{root}/data5.yaml"], "data: expected a mapping, got 5"),
    ("a value that is not YAML", "run", ["--config", "{root}/base.yaml", "--set", "data.jitter=[1,"],
     "--set data.jitter=[1,: the value is not valid YAML"),
    ("every training shard missing (it trained on nothing, exit 0)", "run",
     ["--config", "{root}/base.yaml", "--set", "data.train_shards={root}/train_gone"],
     "5 of the 5 shards that {root}/train_gone/index.json lists are missing or of another size: c0000-00000.tar "
     "(missing)"),
    ("val tree missing a class folder (labels shifted by one)", "run",
     ["--config", "{root}/base.yaml", "--set", "data.val_shards={root}/val_two"],
     "config key 'model.num_classes' is 3 but data.val_shards has 2 classes"),
    ("val classes in another order", "run",
     ["--config", "{root}/base.yaml", "--set", "data.val_shards={root}/val_renamed"],
     "data.val_shards: class 1 is 'class2' there but 'class1' in the training shards"),
    ("num_classes below the labels (IndexError after 3 attempts)", "run",
     ["--config", "{root}/base.yaml", "--set", "model.num_classes=2"],
     "config key 'model.num_classes' is 2 but data.train_shards has 3 classes"),
    ("a shard url that leaves the folder (absolute)", "run",
     ["--config", "{root}/base.yaml", "--set", "data.val_shards={root}/escape_abs"],
     "shard url '/etc/passwd' leaves the shard folder"),
    ("a shard url that leaves the folder (..)", "run",
     ["--config", "{root}/base.yaml", "--set", "data.val_shards={root}/escape_up"],
     "shard url '../train/c0000-00000.tar' leaves the shard folder"),
    ("an index.json that is []", "run", ["--config", "{root}/base.yaml", "--set", "data.val_shards={root}/not_index"],
     "not_index/index.json: not a wids-shard-index-v1 file"),
    ("an unknown model option (a TypeError in every worker, after every retry)", "run",
     ["--config", "{root}/base.yaml", "--set", "model.options.bogus=3"],
     "config section 'model': simple_net cannot be built from it: SimpleNet.__init__() got an unexpected keyword "
     "argument 'bogus'"),
    ("a model option of the wrong type", "run", ["--config", "{root}/base.yaml", "--set", "model.options.width=abc"],
     "config section 'model': simple_net cannot be built from it: invalid literal for int()"),
    ("a branch that is not a stage (ignored in bp mode, fatal in a relay trial)", "run",
     ["--config", "{root}/base.yaml", "--set", "model.branch=conv9"], "SimpleNet has no stage 'conv9'; stages:"),
    ("an auxiliary head kind that does not exist", "run",
     ["--config", "{root}/base.yaml", "--set", "model.aux_head=tiny"], "aux head must be one of copy, small, got 'tiny'"),
    ("a negative auxiliary loss weight", "run", ["--config", "{root}/base.yaml", "--set", "model.aux_weight=-0.3"],
     "aux_weight must be >= 0, got -0.3"),
    ("model.init_from a missing checkpoint", "run",
     ["--config", "{root}/base.yaml", "--set", "model.init_from={root}/no_such_state.pt"],
     "config key 'model.init_from': cannot read {root}/no_such_state.pt"),
    ("model.init_from a checkpoint that does not fit the model", "run",
     ["--config", "{root}/base.yaml", "--set", "model.init_from={root}/model3.pt", "--set", "model.options.width=2"],
     "config key 'model.init_from': {root}/model3.pt does not fit SimpleNet: SimpleNet has no convolution shaped like"),
    ("model.init_from a file that is not a checkpoint", "run",
     ["--config", "{root}/base.yaml", "--set", "model.init_from={root}/snapshot.json"],
     "config key 'model.init_from': {root}/snapshot.json is not a checkpoint written by training/run.py"),
    ("search.py --trials 0", "search",
     ["--config", "{root}/base.yaml", "--space", "{root}/space.yaml", "--trials", "0"],
     "argument --trials: must be a whole number >= 1, got '0'"),
    ("search.py on a base config with a bad value", "search",
     ["--config", "{root}/base.yaml", "--space", "{root}/space.yaml", "--set", "optim.momentum=1.5"],
     "config key 'optim.momentum' must be in [0, 1), got 1.5"),
    ("search.py: a value a trial may sample fails training's pre-flight", "search",
     ["--config", "{root}/base.yaml", "--space", "{root}/space_val.yaml"],
     "space_val.yaml: params.data.val_shards = {root}/val5: config key 'model.num_classes' is 3 but "
     "data.val_shards has 5 classes"),
    ("search.py: a model option a trial may sample does not build", "search",
     ["--config", "{root}/base.yaml", "--space", "{root}/space_option.yaml"],
     "space_option.yaml: params.model.options.widht = 64: config section 'model': simple_net cannot be built"),
    ("a photo given as the training config (a raw UnicodeDecodeError)", "run", ["--config", "{root}/lists/photo.txt"],
     "{root}/lists/photo.txt:1: not UTF-8 text (byte 0xff); is it the settings file?"),
    ("search.py: a photo given as the space", "search",
     ["--config", "{root}/base.yaml", "--space", "{root}/lists/photo.txt"],
     "{root}/lists/photo.txt:1: not UTF-8 text (byte 0xff)"),
    ("shard.py: a photo given as the recipe", "shard",
     ["--config", "{root}/lists/photo.txt", "--image-folder", "{root}/tree", "--out", "{out}"],
     "{root}/lists/photo.txt:1: not UTF-8 text (byte 0xff)"),
    ("shard.py: a recipe value of the wrong type (a TypeError mid-run)", "shard",
     ["--config", "{root}/recipe_typo.yaml", "--image-folder", "{root}/tree", "--out", "{out}"],
     "setting 'image_size' in {root}/recipe_typo.yaml: invalid int value: 'big'"),
    ("shard.py --max-pixels 0", "shard", ["--image-folder", "{root}/tree", "--out", "{out}", "--max-pixels", "0"],
     "--max-pixels must be >= 1, got 0"),
    ("shard.py --seed -1", "shard", ["--image-folder", "{root}/tree", "--out", "{out}", "--seed", "-1"],
     "--seed must be >= 0, got -1"),
    ("shard.py --out inside the --image-folder tree (a rerun read its own shards as images)", "shard",
     ["--image-folder", "{root}/tree", "--out", "{root}/tree/shards"],
     "--out {root}/tree/shards is inside --image-folder {root}/tree"),
    ("shard.py --out a folder of the user's files (they were overwritten)", "shard",
     ["--image-folder", "{root}/tree", "--out", "{root}/users_folder"],
     "--out {root}/users_folder holds files that this tool did not write (index.json): give an empty or new "
     "folder, or --force"),
    ("two shard.py runs into one --out (the second deleted the first one's rejects)", "shard",
     ["--image-folder", "{root}/tree", "--out", "{root}/busy_out"],
     "another run (pid {pid} on {host}, since earlier) is writing to {root}/busy_out; wait for it to end"),
    ("shard.py: a latin-1 list (a raw UnicodeDecodeError without a line)", "shard",
     shard_list("latin.txt"),
     "{root}/lists/latin.txt:2: not UTF-8 text (byte 0xe9 at column 11); re-encode the file as UTF-8"),
    ("shard.py: a label-less list whose path sits in a folder naming no class", "shard",
     shard_list("testlist.txt"),
     "{root}/lists/testlist.txt:2: folder 'volcano' of 'volcano/b.jpg' names no class of the categories"),
    ("shard.py: attributes with a multi-label list", "shard",
     shard_list("multi.txt", "cats.txt", "--attributes", "{root}/lists/attributes.csv"),
     "{root}/lists/multi.txt gives several labels per entry: --attributes are for single-label scene lists"),
    ("shard.py: categories numbered from 2", "shard",
     shard_list("multi.txt", "cats_from2.txt"),
     "{root}/lists/cats_from2.txt: class ids must be 0..1 or 1..2 with no gaps"),
    ("multi-label shards with ray_data ingest", "run",
     ["--config", "{root}/base.yaml", "--set", "data.train_shards={root}/train_multi_label", "--set",
      "data.ingest=ray_data"],
     "config key 'data.ingest': {root}/train_multi_label is multi-label"),
    ("shard.py: a gzipped list", "shard",
     shard_list("list.txt.gz"),
     "list file {root}/lists/list.txt.gz is gzip-compressed: decompress it first"),
    ("shard.py: a binary file as list", "shard",
     shard_list("photo.txt"),
     "{root}/lists/photo.txt:1: not a text list (a NUL byte at column 5)"),
    ("shard.py: a latin-1 categories file", "shard",
     shard_list("latin.txt", "cats_latin.txt"),
     "{root}/lists/cats_latin.txt:2: not UTF-8 text (byte 0xe9); re-encode it as UTF-8"),
    ("evaluate.py: a 3-class checkpoint on 5-class shards", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val5", "--out", "{out}"],
     "model3.pt predicts 3 classes but {root}/val5 has 5"),
    ("evaluate.py: shards whose classes are in another order", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val_renamed", "--out", "{out}"],
     "was trained with class 1 = 'class1', but in {root}/val_renamed class 1 is 'class2'"),
    ("evaluate.py with a shard missing", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/train_gone", "--out", "{out}"],
     "5 of the 5 shards that {root}/train_gone/index.json lists are missing"),
    ("evaluate.py: a JSON file as checkpoint", "evaluate",
     ["--checkpoint", "{root}/snapshot.json", "--shards", "{root}/val", "--out", "{out}"],
     "snapshot.json: not a checkpoint written by training/run.py"),
    ("evaluate.py --actors 0", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}", "--actors", "0"],
     "argument --actors: must be a whole number >= 1, got '0'"),
    ("evaluate.py --scales 0", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}", "--scales", "0"],
     "argument --scales: must be a whole number >= 1, got '0'"),
    ("evaluate.py --heldout 1.5", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}", "--heldout", "1.5"],
     "argument --heldout: must be a number in [0, 1], got '1.5'"),
    ("evaluate.py --max-skipped-fraction 2", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}", "--max-skipped-fraction", "2"],
     "argument --max-skipped-fraction: must be a number in [0, 1], got '2'"),
    ("evaluate.py: a crop larger than the image it is cut from (it padded silently)", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}", "--size", "300"],
     "--size 300 is larger than the smallest scale 256: center's crops would run past the image"),
    ("sample.py --num -1", "sample",
     ["--shards", "{root}/train", "--mode", "uniform", "--num", "-1", "--out", "{out}/d.jsonl"],
     "--num, --loader-workers, --batch-size, --block and --buffer must be >= 1"),
    ("sample.py --out a folder", "sample",
     ["--shards", "{root}/train", "--mode", "uniform", "--num", "3", "--out", "{root}"],
     "is a folder; give the draws file's path"),
    ("sample.py with every shard missing (it looped forever)", "sample",
     ["--shards", "{root}/train_gone", "--mode", "class-aware", "--num", "3", "--out", "{out}/d.jsonl"],
     "5 of the 5 shards that {root}/train_gone/index.json lists are missing"),
    ("sample.py on an index.json that is []", "sample",
     ["--shards", "{root}/not_index", "--mode", "uniform", "--num", "3", "--out", "{out}/d.jsonl"],
     "not a wids-shard-index-v1 file"),
]
@pytest.mark.parametrize("row,tool,argv,message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_any_work(world, tmp_path, capsys, row, tool, argv, message):
    check_refused(tool, argv, message, world, tmp_path / "out", capsys)


def test_class_names_in_a_list_match_whole_names_or_unique_tails():
    cats = Categories.from_names(["/b/bazaar/indoor", "/b/bazaar/outdoor", "/c/church/indoor"])
    tokens = ("church/indoor", "c/church/indoor", "/c/church/indoor", "bazaar/indoor", "outdoor", "indoor",
              "hurch/indoor")
    label = {t: parse_line(f"x.jpg {t}", cats, labels=LISTED) for t in tokens}
    assert [label[t].label for t in ("church/indoor", "c/church/indoor", "/c/church/indoor")] == [2, 2, 2]
    assert (label["bazaar/indoor"].label, label["outdoor"].label) == (0, 1)
    assert "'indoor' is ambiguous: it could be any of /b/bazaar/indoor, /c/church/indoor" in label["indoor"].problem
    assert label["hurch/indoor"].problem.startswith("unknown_class: 'hurch/indoor' is not in the categories")


def test_an_ambiguous_class_name_is_refused_with_its_line(tmp_path, capsys):
    (tmp_path / "cats.txt").write_text("/b/bazaar/indoor 0\n/b/bazaar/outdoor 1\n/c/church/indoor 2\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "list.txt").write_text("a.jpg church/indoor\nb.jpg indoor\n")
    argv = ["--list", str(tmp_path / "list.txt"), "--images-root", str(tmp_path / "images"),
            "--categories", str(tmp_path / "cats.txt"), "--out", str(tmp_path / "out")]
    assert shard.main(argv) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert "list.txt:2: 'indoor' is ambiguous" in err


def test_an_epoch_without_input_fails_the_run_instead_of_reporting_nan():
    check_epoch_input(0, trained=990, skipped=10, max_skipped_fraction=0.01, validated=400)
    with pytest.raises(RuntimeError, match="epoch 1 trained on no samples"):
        check_epoch_input(0, trained=0, skipped=0, max_skipped_fraction=0.01, validated=400)
    with pytest.raises(RuntimeError, match=r"epoch 3 skipped 11 unreadable samples of 1001 \(1.1%\)"):
        check_epoch_input(2, trained=990, skipped=11, max_skipped_fraction=0.01, validated=400)
    with pytest.raises(RuntimeError, match="validation scored no images"):
        check_epoch_input(0, trained=10, skipped=0, max_skipped_fraction=0.01, validated=0)


def test_glob_characters_in_out_touch_no_neighbour(world, tmp_path):
    """A glob of `out [x]/.state/rejects-*` matched `outx/.state/...`: OUT's files are listed by name now."""
    from common.storage import Location
    from pipelines.offline.shard_index import reject_files_in

    for name in ("out [x]", "outx"):
        (tmp_path / name / ".state").mkdir(parents=True)
        (tmp_path / name / ".state" / "rejects-00000.jsonl").write_text("{}\n")
    neighbour = files_under(tmp_path / "outx")
    assert reject_files_in(Location.parse(str(tmp_path / "out [x]"))) == ["rejects-00000.jsonl"]
    sharding._clean_previous_attempt(Location.parse(str(tmp_path / "out [x]")))
    assert not (tmp_path / "out [x]" / ".state" / "rejects-00000.jsonl").exists()
    assert files_under(tmp_path / "outx") == neighbour
    assert os.path.exists(tmp_path / "outx" / ".state" / "rejects-00000.jsonl")


def test_rejection_reasons_carry_no_object_addresses():
    """`<_io.BytesIO object at 0x...>` in a reason made two identical runs' quarantine.jsonl differ."""
    from pipelines.media.images import ImageRejected, ImageSettings, prepare_image

    reasons = set()
    for _ in range(2):
        with pytest.raises(ImageRejected) as caught:
            prepare_image(b"notes, not a picture", ImageSettings(32, "square", 90, 10**8))
        reasons.add(str(caught.value))
    assert reasons == {"not_an_image: UnidentifiedImageError: cannot identify image file"}


def test_prediction_ids_stay_unique_for_class_folder_corpora():
    assert [evaluation.image_id(s, k) for s, k in [("beach/0.jpg", "beach_0"), ("/forest/0.jpg", "forest_0"),
                                                  ("Places365_val_00000001.jpg", "x"), ("my photo.jpg", "my_photo")]] \
        == ["beach/0.jpg", "forest/0.jpg", "Places365_val_00000001.jpg", "my_photo"]


def test_a_lock_left_by_a_killed_run_is_taken_over_and_released(tmp_path):
    from common.storage import Location, exclusive

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now: the lock's owner is dead
    lock = tmp_path / "out" / ".state" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "before the kill"}))
    with exclusive(Location.parse(str(tmp_path / "out")), ".state/lock"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
