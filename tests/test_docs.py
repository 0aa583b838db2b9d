"""README.md and docs/ hold: every relative link resolves, and every `python <tool>.py ...` command of
their bash blocks parses with that tool's own argument parser."""

from __future__ import annotations

import glob
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:^|\s)python (\S+\.py)\b[^;&|]*")
TOOLS = {"pipelines/shard.py": "pipelines.shard", "pipelines/sample.py": "pipelines.sample",
         "pipelines/color_pca.py": "pipelines.color_pca", "pipelines/demo_shards.py": "pipelines.demo_shards",
         "pipelines/demo_corpus.py": "pipelines.demo_corpus", "pipelines/demo_video.py": "pipelines.demo_video",
         "training/run.py": "training.run", "training/evaluate.py": "training.evaluate",
         "training/predict.py": "training.predict", "tuning/search.py": "tuning.search",
         "tuning/analyze.py": "tuning.analyze"}


def name(path: str) -> str:
    return os.path.relpath(path, ROOT)


def bash_commands(path: str) -> list[str]:
    """The `python <tool>.py` commands of the page's ```bash blocks (also those behind `ray job submit --`
    or an environment assignment), continuation lines joined, from `python` on."""
    blocks = re.findall(r"```bash\n(.*?)```", open(path).read(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            found = COMMAND.search(line.split(" #")[0])
            if found and found.group(1) in TOOLS:
                commands.append(found.group(0).strip())
    return commands


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves(page):
    missing = []
    for target in LINK.findall(open(page).read()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        if not os.path.exists(os.path.join(os.path.dirname(page), target.split("#")[0])):
            missing.append(target)
    assert not missing, f"{name(page)}: links to nothing: {missing}"


def test_the_readme_shows_every_runbook_command_it_promises():
    commands = bash_commands(PAGES[0])
    assert {c.split()[1] for c in commands} >= {"training/run.py", "training/evaluate.py", "training/predict.py",
                                                "pipelines/shard.py", "tuning/search.py", "tuning/analyze.py"}


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_documented_command_parses(page):
    for command in bash_commands(page):
        words = shlex.split(command)
        parser = importlib.import_module(TOOLS[words[1]]).build_parser()
        try:
            parser.parse_args(words[2:])
        except SystemExit:
            pytest.fail(f"{name(page)}: `{command}` does not parse with {words[1]}'s arguments")
