"""The class names a model is scored with: of its shards, or of a categories file as the Places365
release publishes it."""

from __future__ import annotations

import json

from common.storage import Location
from pipelines.offline.corpus import CorpusError, read_categories
from pipelines.online.catalog import Catalog
from training.checkpoint.lookup import CheckpointError


def class_names(shards: str) -> list[str]:
    catalog = Catalog.load(shards)
    if catalog.class_names:  # index.json's, else the class index summary
        return list(catalog.class_names)
    if catalog.loc.is_file("classes.json"):
        return [c["name"] for c in json.loads(catalog.loc.read_bytes("classes.json"))["classes"]]
    return [str(i) for i in range(catalog.num_classes)]


def read_class_names(categories: str | None) -> list[str] | None:
    """The class names of a categories file (`categories_places365.txt`: `/a/airfield 0` lines)."""
    if categories is None:
        return None
    try:
        return list(read_categories(Location.parse(categories)).names)
    except CorpusError as exc:
        raise CheckpointError(f"--categories: {exc}") from None
