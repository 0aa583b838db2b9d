"""Every training setting with its default and meaning, for `--help`: read from training/config.py's
dataclasses and the comment on each field, so the meaning is written once, beside the field."""

from __future__ import annotations

import dataclasses
import inspect
import re

from training.config import TrainConfig

FIELD = re.compile(r"^\s+(\w+): [^=]+=.*?(?:  # (.*))?$")


def meanings(cls) -> dict[str, str]:
    """Each field of dataclass `cls` with the comment on its line ('' where it has none)."""
    found = {}
    for line in inspect.getsource(cls).splitlines():
        m = FIELD.match(line)
        if m:
            found[m.group(1)] = m.group(2) or ""
    return found


def settings() -> list[tuple[str, object, str]]:
    """(dotted key, default, meaning) of every training setting, section by section."""
    rows = []
    defaults = TrainConfig()
    for section in dataclasses.fields(TrainConfig):
        values = getattr(defaults, section.name)
        said = meanings(type(values))
        rows += [(f"{section.name}.{f.name}", getattr(values, f.name), said.get(f.name, ""))
                 for f in dataclasses.fields(values)]
    return rows


def epilog() -> str:
    """The settings block `--help` ends with."""
    rows = settings()
    width = max(len(f"{key} = {default}") for key, default, _ in rows if len(f"{key} = {default}") < 48)
    lines = ["settings (a recipe's sections, or --set KEY=VALUE; --print-config shows them resolved):"]
    for key, default, meaning in rows:
        shown = f"{key} = {_yaml(default)}"
        lines.append(f"  {shown:<{width}}  {meaning}".rstrip() if len(shown) <= width else f"  {shown}\n"
                     f"  {'':<{width}}  {meaning}".rstrip())
    return "\n".join(lines)


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(str, value)) + "]"
    return "{}" if value == {} else str(value)
