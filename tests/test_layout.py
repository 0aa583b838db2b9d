"""The code's layout rules, read from the source: no import circle, a script imports no other script,
the scoring tools never import the training loop, and only training/checkpoint/ opens a checkpoint."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "pipelines", "training", "tuning")


def modules() -> dict[str, str]:
    """module name -> path, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    return found


MODULES = modules()
TREES = {name: ast.parse(open(path).read()) for name, path in MODULES.items()}


def imports(name: str) -> set[str]:
    """The project modules `name` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                    for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in MODULES and m != name}


def is_script(name: str) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in TREES[name].body)


def test_there_is_no_import_circle():
    graph = {name: imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(dep):] + [name, dep]))
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


# the demo's data: modules the demos and tests build on, each also runnable on its own to make that data
DEMO_DATA = {"pipelines.demo_corpus", "pipelines.demo_shards", "pipelines.demo_video"}


def test_no_script_imports_another():
    scripts = {name for name in MODULES if is_script(name)} - DEMO_DATA
    assert {"pipelines.shard", "training.run", "training.evaluate", "training.predict", "tuning.search",
            "tuning.analyze"} <= scripts
    offending = sorted(f"{name} imports {dep}" for name in MODULES for dep in imports(name) & scripts)
    assert not offending


@pytest.mark.parametrize("tool", ["training.evaluate", "training.predict", "training.inference",
                                  "training.pretrained", "training.preflight"])
def test_the_scoring_and_checking_tools_do_not_import_the_training_loop(tool):
    assert "training.train_loop" not in imports(tool)


def test_only_the_checkpoint_package_opens_checkpoint_files():
    calls = sorted(f"{name}:{node.lineno}" for name, tree in TREES.items() if not name.startswith("training.checkpoint")
                   for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and ast.unparse(node.func) in ("torch.load", "torch.save"))
    assert not calls
