"""The one command-line convention (docs/cli.md): every tool takes --config/--set/--print-config/--verbose,
--help gives every setting's default and meaning, flags > --set > --config, wrong settings are named,
old spellings work with a note, and the tools install as places-* commands without sys.path edits."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TOOLS, installed

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tool(path: str):
    return importlib.import_module(TOOLS[path])


def run_tool(path: str, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = tool(path).main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", sorted(TOOLS))
def test_every_tool_has_the_convention_and_explains_every_flag(path, capsys):
    with pytest.raises(SystemExit) as exc:
        tool(path).build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--print-config", "--verbose"):
        assert flag in text, f"{path}: no {flag}"
    parser = tool(path).build_parser()
    unexplained = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not unexplained, f"{path}: flags without help: {unexplained}"


@pytest.mark.parametrize("path", ["training/run.py", "tuning/search.py"])
def test_training_tools_list_every_training_setting_with_its_default_and_meaning(path, capsys):
    from training.settings_help import settings

    with pytest.raises(SystemExit):
        tool(path).build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    rows = settings()
    assert len(rows) > 60 and all(meaning for _, _, meaning in rows), [k for k, _, m in rows if not m]
    for key, _, meaning in rows:
        assert re.search(rf"^  {re.escape(key)} = ", text, re.M), key
        assert " ".join(meaning.split()[:3]) in " ".join(text.split()), key
    assert re.search(r"^  data\.batch_size = 64 +per worker$", text, re.M)


def test_run_print_config_is_a_recipe_run_takes_back(tmp_path, capsys):
    code, first, _ = run_tool("training/run.py", ["--set", "optim.lr=0.05", "--set", "run.epochs=3",
                                                  "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(first)["optim"]["lr"] == 0.05
    (tmp_path / "r.yaml").write_text(first)
    code, again, _ = run_tool("training/run.py", ["--config", str(tmp_path / "r.yaml"), "--print-config"], capsys)
    assert code == 0 and again == first


def test_search_print_config_gives_the_base_recipe(capsys):
    argv = ["--config", f"{ROOT}/configs/train/demo.yaml", "--space", f"{ROOT}/tuning/spaces/demo.yaml",
            "--set", "run.epochs=2", "--print-config"]
    code, out, _ = run_tool("tuning/search.py", argv, capsys)
    assert code == 0 and out.startswith("# search.py: space ") and yaml.safe_load(out)["run"]["epochs"] == 2


def test_flags_beat_set_which_beats_the_file(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("batch_size: 7\nloader_workers: 3\nnum: 5\nmode: uniform\n")
    argv = ["--config", str(tmp_path / "s.yaml"), "--set", "loader_workers=4", "--set", "num=6", "--num", "9",
            "--shards", "s", "--out", "d.jsonl", "--print-config"]
    code, out, _ = run_tool("pipelines/sample.py", argv, capsys)
    settings = yaml.safe_load(out)
    assert code == 0 and (settings["batch_size"], settings["loader_workers"], settings["num"]) == (7, 4, 9)
    assert settings["mode"] == "uniform" and settings["seed"] == 0


def test_a_parser_parses_again_as_it_did_the_first_time(tmp_path):
    from common.tool_settings import new_parser, parse

    p = new_parser("a tool")
    p.add_argument("--shards", required=True)
    p.add_argument("--num", type=int, default=5)
    p.add_argument("paths", nargs="+")
    p.set_defaults(mode="uniform")
    p.add_argument("--mode")
    first = parse(p, ["--shards", "s", "--num", "9", "a.jpg"])
    again = parse(p, ["--shards", "t", "b.jpg", "c.jpg"])
    assert (first.shards, first.num, first.mode, first.paths) == ("s", 9, "uniform", ["a.jpg"])
    assert (again.shards, again.num, again.mode, again.paths) == ("t", 5, "uniform", ["b.jpg", "c.jpg"])
    with pytest.raises(SystemExit):  # still required, after two parses
        parse(p, ["x.jpg"])
    assert p.parse_args(["--shards", "s", "y.jpg"]).num == 5  # argparse's own parse: the defaults are back


def test_a_repeated_flag_given_replaces_the_files_list(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("checkpoint: [a.pt, b.pt]\nshards: s\nout: o\n")
    code, out, _ = run_tool("training/evaluate.py", ["--config", str(tmp_path / "e.yaml"), "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["checkpoint"] == ["a.pt", "b.pt"]
    argv = ["--config", str(tmp_path / "e.yaml"), "--checkpoint", "c.pt", "--set", "scales=[256, 384]",
            "--print-config"]
    code, out, _ = run_tool("training/evaluate.py", argv, capsys)
    assert yaml.safe_load(out)["checkpoint"] == ["c.pt"] and yaml.safe_load(out)["scales"] == [256, 384]


def test_a_file_can_give_the_required_settings(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("seed: 3\n")
    code, _, err = run_tool("pipelines/color_pca.py", ["--config", str(tmp_path / "p.yaml")], capsys)
    assert code == 2 and "the following settings are required: --shards" in err
    (tmp_path / "p.yaml").write_text(f"shards: {tmp_path}/none\n")
    code, _, err = run_tool("pipelines/color_pca.py", ["--config", str(tmp_path / "p.yaml")], capsys)
    assert code == 2 and f"{tmp_path}/none" in err and "required" not in err


@pytest.mark.parametrize("given, named", [
    (["--set", "batch_sise=3"], "setting 'batch_sise' given to --set is not one of this tool's settings (known: "),
    (["--set", "batch_size=many"], "setting 'batch_size' given to --set: invalid int value: 'many'"),
    (["--set", "mode=sideways"], "setting 'mode' given to --set: must be one of uniform, class-aware, got 'sideways'"),
    (["--set", "all_streams=3"], "setting 'all_streams' given to --set: expects true or false, got 3"),
    (["--set", "batch_size"], "--set takes key=value, got 'batch_size'"),
])
def test_a_wrong_setting_is_the_usage_error_naming_it(given, named, capsys):
    argv = ["--shards", "s", "--mode", "uniform", "--num", "3", "--out", "d.jsonl", *given]
    code, _, err = run_tool("pipelines/sample.py", argv, capsys)
    assert code == 2 and named in err and err.startswith("usage: ")


def test_a_wrong_key_in_the_file_is_named_with_the_file(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("protocl: ten_crop\n")
    code, _, err = run_tool("training/evaluate.py", ["--config", str(tmp_path / "e.yaml")], capsys)
    assert code == 2 and f"setting 'protocl' in {tmp_path}/e.yaml is not one of this tool's settings" in err


@pytest.mark.parametrize("path, argv, setting, value", [
    ("training/evaluate.py", ["--checkpoint", "c", "--shards", "s", "--out", "o", "--workers", "3"], "actors", 3),
    ("training/evaluate.py", ["--checkpoint", "c", "--shards", "s", "--out", "o", "--set", "workers=2"], "actors", 2),
    ("pipelines/sample.py", ["--shards", "s", "--mode", "uniform", "--num", "1", "--out", "o", "--workers", "2"],
     "loader_workers", 2),
    ("pipelines/sample.py", ["--shards", "s", "--mode", "uniform", "--num", "1", "--out", "o", "--batch", "5"],
     "batch_size", 5),
    ("pipelines/color_pca.py", ["--shards", "s", "--samples", "40"], "images", 40),
])
def test_an_old_spelling_works_with_a_note(path, argv, setting, value, capsys):
    code, out, err = run_tool(path, [*argv, "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)[setting] == value
    assert re.search(r"note: .* is now .*; the old spelling goes in the next release", err)


def test_search_samples_is_now_trials(capsys):
    argv = ["--config", f"{ROOT}/configs/train/demo.yaml", "--samples", "3", "--print-config"]
    code, out, err = run_tool("tuning/search.py", argv, capsys)
    assert code == 0 and "3 trials" in out and "note: --samples is now --trials" in err


def test_run_use_gpu_is_now_run_gpu_and_both_are_refused(tmp_path, capsys):
    code, out, err = run_tool("training/run.py", ["--set", "run.use_gpu=false", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["run"]["gpu"] is False and "use_gpu" not in out
    assert "note: config key 'run.use_gpu' is now 'run.gpu'" in err
    (tmp_path / "r.yaml").write_text("run: {use_gpu: false, gpu: false}\n")
    code, _, err = run_tool("training/run.py", ["--config", str(tmp_path / "r.yaml")], capsys)
    assert code == 2 and "'run.use_gpu' and 'run.gpu' are one setting" in err


def test_a_checkpoint_saved_with_the_old_key_still_loads_silently(capsys):
    from training.config import from_dict, to_dict

    raw = to_dict(from_dict({}))
    raw["run"]["use_gpu"] = raw["run"].pop("gpu")
    assert from_dict(raw).run.gpu is False and capsys.readouterr().err == ""


def test_verbose_puts_a_failures_traceback_on_the_console(capsys):
    from common.console import report_failure

    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        failure = exc
    for verbose in (False, True):
        assert report_failure("x.py", failure, verbose) == 1
        err = capsys.readouterr().err
        assert ("Traceback" in err) == verbose and "x.py: failed: " in err


def test_the_tools_install_as_commands():
    assert set(installed()) >= {"places-shard", "places-train", "places-eval", "places-predict", "places-search",
                                "places-analyze"}
    train = shutil.which("places-train", path=os.path.dirname(sys.executable))
    assert train, "places-train is not installed beside this Python (pip install -e .)"
    out = subprocess.run([train, "--set", "run.epochs=2", "--print-config"], capture_output=True, text=True,
                         timeout=300, cwd="/")
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["run"]["epochs"] == 2, out.stderr


def test_no_tool_edits_sys_path():
    scripts = [os.path.join(ROOT, p) for p in TOOLS] + [os.path.join(ROOT, "benchmarks", n)
                                                        for n in os.listdir(os.path.join(ROOT, "benchmarks"))
                                                        if n.endswith(".py")]
    edits = [p for p in scripts if re.search(r"sys\.path\.insert\(0, (ROOT|os\.path\.dirname)", open(p).read())]
    assert not edits, edits


def test_recipes_are_kept_by_kind():
    kinds = sorted(n for n in os.listdir(os.path.join(ROOT, "configs")))
    assert kinds == ["course", "shard", "train", "video"]
    shard = importlib.import_module("pipelines.shard")
    for name in os.listdir(os.path.join(ROOT, "configs", "shard")):
        assert shard.parse_args(["--config", os.path.join(ROOT, "configs", "shard", name), "--out", "o"]).list
