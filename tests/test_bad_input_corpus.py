"""Bad input to pipelines/shard.py's readers, second pass: categories and list files whose shape is not the
documented one (a header line, a line without an id) shifted every label or lost every entry with exit 0.
`#` lines are comments in every reader; any other line of another shape is refused with its number."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.storage import Location
from pipelines.offline import list_file
from pipelines.offline.corpus import LISTED, Categories, looks_labeled, parse_line, read_categories
from refusals import check_refused, join_a_gone_cluster


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_corpus")
    (root / "images").mkdir()
    files = {
        "cats.txt": "/a/airfield 0\n/b/beach 1\n",
        "cats_header.txt": "name id\n/a/airfield 0\n/b/beach 1\n",
        "cats_no_id.txt": "/a/airfield 0\n/b/beach\n",
        "cats_superscript.txt": "/a/airfield \u00b9\n/b/beach 0\n",
        "list.txt": "a/airfield/1.jpg 0\nb/beach/2.jpg 1\n",
        "list_header.txt": "path,label\na/airfield/1.jpg 0\nb/beach/2.jpg 1\n",
        "list_header_names.txt": "path,label\na/1.jpg /a/airfield\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def shard_argv(listed: str, categories: str) -> list[str]:
    return ["--list", f"{{root}}/{listed}", "--images-root", "{root}/images", "--categories",
            f"{{root}}/{categories}", "--out", "{out}"]


CASES = [
    ("a header line in the categories (class 0 became 'name id')", shard_argv("list.txt", "cats_header.txt"),
     "{root}/cats_header.txt:2: '/a/airfield 0' is of the form 'name id' but line 1 'name id' is a bare class "
     "name: every line must be alike (a header line? remove it or start it with '#')"),
    ("a categories line without its id", shard_argv("list.txt", "cats_no_id.txt"),
     "{root}/cats_no_id.txt:2: '/b/beach' is a bare class name but line 1 '/a/airfield 0' is of the form "
     "'name id'"),
    ("a categories id int() does not take (a traceback)", shard_argv("list.txt", "cats_superscript.txt"),
     "{root}/cats_superscript.txt:2: '/b/beach 0' is of the form 'name id' but line 1 '/a/airfield \u00b9' is a "
     "bare class name"),
    ("a list whose first line is path,label (read as unlabeled: every entry lost)",
     shard_argv("list_header.txt", "cats.txt"),
     "{root}/list_header.txt:1: 'path,label' has no label but line 2 'a/airfield/1.jpg 0' has one: is line 1 a "
     "header? Remove it or start it with '#'"),
    ("a list header over class-name labels", shard_argv("list_header_names.txt", "cats.txt"),
     "{root}/list_header_names.txt:1: 'path,label' has no label but line 2"),
]


@pytest.mark.parametrize("row,argv,message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_any_work(world, tmp_path, capsys, row, argv, message):
    check_refused("shard", argv, message, world, tmp_path / "out", capsys)


@pytest.mark.parametrize("how", ["recorded", "RAY_ADDRESS"])
def test_a_cluster_that_no_longer_runs_is_refused_not_waited_for(world, tmp_path, capsys, monkeypatch, how):
    message = join_a_gone_cluster(monkeypatch, tmp_path / "ray-temp", how)
    check_refused("shard", shard_argv("list.txt", "cats.txt"), message, world, tmp_path / "out", capsys)


def test_comment_lines_are_skipped_by_every_reader_alike(tmp_path):
    """The pre-flight (text_lines) and the Ray tasks (byte ranges, parse_line) count the same entries."""
    (tmp_path / "cats.txt").write_text("# name id\n/a/airfield 0\n  # beaches next\n/b/beach 1\n")
    assert read_categories(Location.parse(str(tmp_path / "cats.txt"))).names == ("/a/airfield", "/b/beach")
    categories = read_categories(Location.parse(str(tmp_path / "cats.txt")))
    listed = tmp_path / "list.txt"
    listed.write_text("# path label\na/1.jpg 0\n#b/2.jpg 1\nb/3.jpg 1\n")
    loc = Location.parse(str(listed))
    assert [n for n, _ in list_file.text_lines(loc)] == [2, 4]
    parsed = [parse_line(line, categories, LISTED) for start, end in list_file.byte_ranges(loc, range_bytes=7)
              for line in list_file.lines_in_range(loc, start, end)]
    assert [(e.source, e.label) for e in parsed if e is not None] == [("a/1.jpg", 0), ("b/3.jpg", 1)]


def test_a_label_at_the_end_of_a_line_is_told_from_a_path_with_spaces():
    categories = Categories.from_names(["/a/airfield", "/b/beach"])
    assert looks_labeled("x.jpg 3", categories) and looks_labeled("x.jpg 3,4", categories)
    assert looks_labeled("x.jpg beach", categories) and not looks_labeled("my photo.jpg", categories)
    assert not looks_labeled("x.jpg", None)


@pytest.mark.slow
def test_every_label_out_of_range_is_quarantined_and_the_run_fails(tmp_path):
    """It failed after Ray started ('num_partitions must be a positive integer') with no quarantine file."""
    from conftest import ROOT, encode, scene

    (tmp_path / "images" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "images" / "a" / f"{i}.jpg").write_bytes(encode(scene(i)))
    (tmp_path / "list.txt").write_text("a/0.jpg 7\na/1.jpg 8\na/2.jpg 9\n")
    (tmp_path / "cats.txt").write_text("/a/airfield 0\n/b/beach 1\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "pipelines", "shard.py"), "--list",
                           str(tmp_path / "list.txt"), "--images-root", str(tmp_path / "images"), "--categories",
                           str(tmp_path / "cats.txt"), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "entries read 3 = written 0 + quarantined 3 (label_out_of_range 3)" in done.stdout
    [line] = [line for line in done.stderr.splitlines() if line.startswith("shard.py:")]
    assert line == f"shard.py: error: every entry was quarantined, nothing was written: see {tmp_path}/out/quarantine.jsonl"
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 3


def test_a_ray_task_failure_is_named_by_the_users_error():
    """A full disk while sharding printed `RayTaskError(UserCodeException)`; ENOSPC was only in the log."""
    from common.console import what_failed

    text = ("ray::MapBatches(write_group)() (pid=1, ip=10.0.0.1)\n  File \"shard_tasks.py\", line 9, in write_group\n"
            "OSError: [Errno 28] No space left on device: '/out/c0000-00000.tar'\n\nThe above exception was the "
            "direct cause of the following exception:\n\nray::MapBatches(write_group)() (pid=1, ip=10.0.0.1)\n"
            "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    assert what_failed(RuntimeError(text)) == "OSError: [Errno 28] No space left on device: '/out/c0000-00000.tar'"
    assert what_failed(ValueError("one line")) == "ValueError: one line"


@pytest.mark.slow
def test_ctrl_c_during_sharding_is_one_line_and_a_rerun_finishes(tmp_path):
    """Ctrl-C printed a raw KeyboardInterrupt traceback."""
    import signal

    from conftest import ROOT, encode, scene

    for c in range(2):
        (tmp_path / "tree" / f"c{c}").mkdir(parents=True)
        for i in range(300):
            (tmp_path / "tree" / f"c{c}" / f"{i}.jpg").write_bytes(encode(scene(c * 1000 + i, 96, 96)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [sys.executable, os.path.join(ROOT, "pipelines", "shard.py"), "--image-folder", str(tmp_path / "tree"),
            "--out", str(tmp_path / "out"), "--image-size", "64", "--shard-samples", "50"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # Ray is up: the pipeline is starting
        if line.startswith("Ray dashboard"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, out + err
    [line] = [line for line in err.splitlines() if line.startswith("shard.py:")]
    assert line == (f"shard.py: interrupted; {tmp_path / 'out'} is unlocked: the same command again continues, "
                    f"reusing the shards already written")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "entries read 600 = written 600 + quarantined 0" in done.stdout, done.stderr
