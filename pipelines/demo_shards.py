"""The built-in demo data: generate the corpus and shard its train/val/test lists, each only if absent.

    python pipelines/demo_shards.py [--data data/demo] [--seed 0]
    places-demo ...                       (the same, installed with the package)

Shards land in DATA/shards/{train,val,test}; each has a manifest.json once complete, which is what
"present" means here, so an interrupted demo simply resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from common.tool_settings import new_parser, parse
from pipelines.demo_corpus import make_demo_corpus
from pipelines.offline.sharding import ShardConfig, run_and_report

SPLITS = {"train": ("train.txt", "data_256"), "val": ("val.txt", "val_256"), "test": ("test.txt", "test_256")}
ATTRIBUTE_FILES = {"train": "attributes_train.csv", "val": "attributes_val.csv"}  # the test split has none


def prepare_demo(data: str = "data/demo", seed: int = 0, shard_samples: int = 200,
                 verbose: bool = False, splits: tuple[str, ...] = tuple(SPLITS)) -> dict[str, dict]:
    """The corpus, and shards for `splits` (training needs only train and val); returns each split's
    manifest.  `verbose`: Ray's INFO output on the console too."""
    data = os.path.abspath(data)
    # test.txt is written last by make_demo_corpus; a corpus from before the attributes is made again
    if not all(os.path.exists(os.path.join(data, n)) for n in ("test.txt", *ATTRIBUTE_FILES.values())):
        summary = make_demo_corpus(data, seed)
        print(f"demo corpus: {summary['train']} train / {summary['val']} val / {summary['test']} test entries "
              f"in {data}")
    manifests = {}
    for split in splits:
        listing, images = SPLITS[split]
        out = os.path.join(data, "shards", split)
        manifest_path = os.path.join(out, "manifest.json")
        if not _complete(out, with_attributes=split in ATTRIBUTE_FILES):
            labels = {} if split == "test" else {"categories": os.path.join(data, "categories.txt"),
                                                 "attributes": os.path.join(data, ATTRIBUTE_FILES[split])}
            cfg = ShardConfig(list=os.path.join(data, listing), images_root=os.path.join(data, images), out=out,
                              shard_samples=shard_samples, name=f"demo-{split}", **labels)
            if run_and_report(cfg, verbose) != 0:
                raise RuntimeError(f"sharding the demo's {split} split failed")
        with open(manifest_path) as f:
            manifests[split] = json.load(f)
    return manifests


def _complete(out: str, with_attributes: bool) -> bool:
    """A finished sharding (its manifest), with the attributes if the split has them (older demo shards
    have none: they are sharded again, reusing nothing, since every sample changes)."""
    if not os.path.exists(os.path.join(out, "manifest.json")):
        return False
    with open(os.path.join(out, "index.json")) as f:
        return not with_attributes or "attribute_names" in json.load(f)


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__)
    p.add_argument("--data", default="data/demo", help="the demo's folder: its corpus, then DATA/shards/SPLIT")
    p.add_argument("--seed", type=int, default=0, help="seeds the generated images and the shards' order")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    for split, m in prepare_demo(a.data, a.seed, verbose=a.verbose).items():
        print(f"{split}: read {m['entries_read']} = written {m['written']} + quarantined {m['quarantined']} "
              f"{m['quarantine_reasons']} -> {os.path.join(os.path.abspath(a.data), 'shards', split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
