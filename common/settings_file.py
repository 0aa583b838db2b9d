"""A YAML settings file (a training recipe, a sharding recipe, a search space), read the one way all
tools share: each way a file can be wrong is one line naming it, never a raw UnicodeDecodeError or a
parser traceback."""

from __future__ import annotations

import yaml

from common.storage import GZIP_MAGIC


class SettingsFileError(ValueError):
    pass


def read_mapping(path: str, expected: str = "a mapping of settings") -> dict:
    """The file's top-level mapping; an empty file is an empty mapping."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SettingsFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if data.startswith(GZIP_MAGIC):
        raise SettingsFileError(f"{path} is gzip-compressed: decompress it first")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SettingsFileError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); is it the "
                                f"settings file?") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsFileError(f"{path}: expected {expected}, got a {type(raw).__name__}")
    return raw


def parse_assignment(item: str) -> tuple[str, object]:
    """`key=value` (a `--set` argument) as (key, the value read as YAML: 3 an int, true a bool, [1, 2] a list)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set takes key=value, got {item!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError(f"--set {item}: the value is not valid YAML") from None
