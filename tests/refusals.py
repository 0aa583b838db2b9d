"""What every bad-input row checks: the tool's exit code 2, one console line holding the expected message,
nothing outside the output folder changed, and Ray never started (the refusal came before any work)."""

from __future__ import annotations

import os
import socket

from pipelines import sample, shard
from training import evaluate, predict, run
from tuning import search

TOOLS = {"run": run.main, "search": search.main, "evaluate": evaluate.main, "sample": sample.main,
         "shard": shard.main, "predict": predict.main}


def files_under(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def call(tool: str, argv: list[str]) -> int:
    try:
        return TOOLS[tool](argv)
    except SystemExit as exc:  # argparse's own refusals: usage, then one error line
        return exc.code


def error_lines(capsys) -> list[str]:
    """The console's error lines, argparse's usage lines left out."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("usage:", " "))]


def check_refused(tool: str, argv: list[str], message: str, root, out, capsys) -> None:
    """`argv` ({root}, {out} filled in; run.py and search.py write under `out`) is refused as the row says."""
    import ray

    argv = [a.format(root=root, out=out) for a in argv]
    argv += (
        [] if any(a.startswith("run.storage_path=") for a in argv) else
        ["--set", f"run.storage_path={out}"] if tool == "run" else
        ["--storage-path", str(out)] if tool == "search" else [])
    before = files_under(root)
    code = call(tool, argv)
    err = error_lines(capsys)
    expected = message.format(root=root, pid=os.getpid(), host=socket.gethostname())
    assert code == 2 and len(err) == 1 and expected in err[0], (code, err)
    assert files_under(root) == before and not (out / "metrics.json").exists()
    assert not ray.is_initialized()  # refused before Ray started


def join_a_gone_cluster(monkeypatch, folder, how: str) -> str:
    """Point `ray.init()` at a cluster that no longer runs (nothing listens on its port): `recorded`, the
    address file a `ray start` killed without `ray stop` leaves; or `RAY_ADDRESS`.  Returns what the tools'
    one line says."""
    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    if how == "recorded":
        (folder / "ray").mkdir(parents=True)
        (folder / "ray" / "ray_current_cluster").write_text(address)
        monkeypatch.setenv("RAY_TMPDIR", str(folder))
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        return f", recorded in {folder}/ray/ray_current_cluster) is not running: start it again, or delete that file"
    monkeypatch.setenv("RAY_ADDRESS", address)
    return f"RAY_ADDRESS={address}: no Ray cluster answers at "
