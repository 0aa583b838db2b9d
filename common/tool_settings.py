"""The one command-line convention every tool follows, timm/torchvision-style:

- `--config FILE`: a YAML mapping of the tool's settings, `--set key=value` (repeatable) one setting,
  flags given on the command line above both, `--set` above the file, the file above the defaults;
- `--print-config`: the resolved settings as YAML (a file `--config` takes back), then exit 0;
- `--help`: every setting with its default and one line of meaning; `--verbose`: Ray's own output too.

A tool's settings are its flags, named by their long form with `_` for `-` (`--batch-size` is
`batch_size`).  The training tools (run.py, search.py) take a training recipe as `--config` instead and
`--set` its dotted keys (training/config.py); they use this module's parser and help, not `parse`.
An old spelling (`add_old_spelling`) keeps working for one release and says so in one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import yaml

from common.console import add_verbose_flag
from common.settings_file import SettingsFileError, parse_assignment, read_mapping

CONVENTION = {"help", "config", "set", "print_config", "verbose"}  # the flags that are not settings


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written; each flag's help ends with its default (kept by `parse` in `shown`)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = getattr(action, "shown", action.default)
        if "default" in text or default in (None, False, [], (), argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def new_parser(doc: str, settings: bool = True, ray: bool = True) -> argparse.ArgumentParser:
    """A tool's parser with the convention's flags; `settings=False` leaves `--config`/`--set` to the tool
    (the training tools, whose settings are a training recipe's); `ray`: the tool starts Ray."""
    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    if settings:
        p.add_argument("--config", metavar="FILE", help="YAML file of this tool's settings (the keys "
                                                        "--print-config prints); flags given here override it")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="one setting, e.g. --set batch_size=64; above --config, below the flags")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    add_verbose_flag(p, ray)
    return p


class _OldSpelling(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        note(parser.prog, option_string, self.metavar)
        setattr(namespace, self.dest, values if self.nargs != 0 else self.const)


def note(prog: str, old: str, new: str) -> None:
    print(f"{prog}: note: {old} is now {new}; the old spelling goes in the next release", file=sys.stderr)


def add_old_spelling(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """`old` (a flag) does what `new` does, with a note; as a settings key too (`old` without dashes)."""
    action = next(a for a in p._actions if new in a.option_strings)
    kwargs = {"nargs": 0, "const": True} if action.nargs == 0 else {"type": action.type, "choices": action.choices}
    p.add_argument(old, dest=action.dest, action=_OldSpelling, metavar=new, help=argparse.SUPPRESS,
                   default=argparse.SUPPRESS, **kwargs)
    old_keys(p)[_key(old)] = action.dest


def old_keys(p: argparse.ArgumentParser) -> dict[str, str]:
    if not hasattr(p, "old_keys"):
        p.old_keys = {}
    return p.old_keys


def _key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def settings_of(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The tool's settings: each flag's (or positional's) action by key, the convention's flags aside."""
    return {a.dest: a for a in p._actions
            if a.dest not in CONVENTION and a.help is not argparse.SUPPRESS and a.dest != argparse.SUPPRESS}


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Flags > --set > --config > defaults; a wrong key, type or choice is the usage error naming it."""
    actions = settings_of(p)
    required = [a for a in actions.values() if a.required or (a.nargs == "+" and not a.option_strings)]
    with _given_flags_only(p, actions):
        given = vars(p.parse_args(argv))
    values = {dest: a.shown for dest, a in actions.items()}
    if given.get("config"):
        try:
            from_file = read_mapping(given["config"], "a mapping of this tool's settings")
        except SettingsFileError as exc:
            p.error(str(exc))
        values.update(_typed(p, actions, from_file, f"in {given['config']}"))
    assignments = {}
    for item in given.get("set", []):
        try:
            key, value = parse_assignment(item)
        except ValueError as exc:
            p.error(str(exc))
        assignments[key] = value
    values.update(_typed(p, actions, assignments, "given to --set"))
    values.update({k: v for k, v in given.items() if k in actions and not (v == [] and actions[k].nargs == "*")})
    if given.get("print_config"):
        print(yaml.safe_dump(values, sort_keys=False), end="")
        p.exit(0)
    missing = [a for a in required if values.get(a.dest) in (None, [])]
    if missing:
        names = ", ".join(a.option_strings[-1] if a.option_strings else a.metavar or a.dest for a in missing)
        p.error(f"the following settings are required: {names} (a flag, or a key of --config or --set)")
    return argparse.Namespace(**values, **{k: v for k, v in given.items() if k in CONVENTION})


@contextlib.contextmanager
def _given_flags_only(p: argparse.ArgumentParser, actions: dict):
    """While parsing, no setting has a default or is required, so the namespace holds only the flags
    given (the defaults move to each action's `shown`, which --help prints); the parser is left as it
    was, so it can parse again."""
    saved = {dest: (a.default, a.required, a.nargs) for dest, a in actions.items()}
    defaults = dict(p._defaults)
    for a in actions.values():
        a.shown, a.default, a.required = p._defaults.pop(a.dest, a.default), argparse.SUPPRESS, False
        if a.nargs == "+" and not a.option_strings:
            a.nargs = "*"
    try:
        yield
    finally:
        for dest, (default, required, nargs) in saved.items():
            actions[dest].default, actions[dest].required, actions[dest].nargs = default, required, nargs
        p._defaults.clear()
        p._defaults.update(defaults)


def _typed(p: argparse.ArgumentParser, actions: dict, mapping: dict, where: str) -> dict:
    """`mapping`'s values checked and converted as their flags' would be."""
    out = {}
    for raw_key, value in mapping.items():
        key = _key(str(raw_key))
        if key in old_keys(p):
            note(p.prog, f"setting {raw_key!r}", repr(old_keys(p)[key]))
            key = old_keys(p)[key]
        if key not in actions:
            p.error(f"setting {raw_key!r} {where} is not one of this tool's settings (known: "
                    f"{', '.join(sorted(actions))})")
        try:
            out[key] = _value(actions[key], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            p.error(f"setting {raw_key!r} {where}: {exc}")
    return out


def _value(action: argparse.Action, value):
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ValueError(f"expects true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        return [_one(action, v) for v in (value if isinstance(value, list) else [value])]
    return _one(action, value)


def _one(action: argparse.Action, value):
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"expects one value, got {value!r}")
    try:
        converted = (action.type or str)(str(value))
    except ValueError:
        name = getattr(action.type, "__name__", "text")
        raise ValueError(f"invalid {name} value: {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}, got {converted!r}")
    return converted
