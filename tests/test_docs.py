"""README.md and docs/ hold: every relative link resolves, and every `python <tool>.py ...` (or installed
`places-*`) command of their bash blocks parses with that tool's own argument parser, in today's spelling."""

from __future__ import annotations

import glob
import importlib
import os
import re
import shlex

import pytest

from conftest import ROOT, TOOLS, installed

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:^|\s)(?:python (\S+\.py)|(places-[a-z-]+))\b[^;&|]*")
OLD_SPELLINGS = ("run.use_gpu=", " --samples ", " --workers ", " --batch ")  # each still works, with a note


def name(path: str) -> str:
    return os.path.relpath(path, ROOT)


def bash_commands(path: str) -> list[str]:
    """The `python <tool>.py` commands of the page's ```bash blocks (also those behind `ray job submit --`
    or an environment assignment), continuation lines joined, from `python` on."""
    blocks = re.findall(r"```bash\n(.*?)```", open(path).read(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            found = COMMAND.search(line.split(" #")[0].split(" > ")[0])  # (a comment, a redirection aside)
            tool = found and (found.group(1) or installed().get(found.group(2)))
            if tool in TOOLS:
                words = found.group(0).split()
                commands.append(" ".join(["python", tool, *words[1 if found.group(2) else 2:]]))
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
        for action in parser._actions:  # a required flag may come from the command's --config
            action.required = action.required and "--config" not in words
        try:
            parser.parse_args(words[2:])
        except SystemExit:
            pytest.fail(f"{name(page)}: `{command}` does not parse with {words[1]}'s arguments")
        old = [o.strip() for o in OLD_SPELLINGS if o in f" {command} "]
        assert not old, f"{name(page)}: `{command}` uses the old spelling {old[0]}"


def test_every_installed_name_runs_a_documented_tool():
    assert set(installed().values()) == set(TOOLS)
