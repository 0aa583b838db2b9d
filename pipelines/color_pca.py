"""Eigen-decomposition of the training set's RGB covariance, stored beside the shards (AlexNet's PCA noise).

    python pipelines/color_pca.py --shards OUT [--samples 10000] [--seed 0]

Streams `--samples` images of a seeded uniform pass (all of them if fewer), decoded at reduced DCT
size (pixel colour statistics do not need full resolution), accumulates mean and covariance of the
[0, 1] RGB pixels in float64, and writes OUT/color_pca.json: eigenvalues (descending), eigenvectors
(rows), mean, std, and how many images and pixels they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from pipelines.online.catalog import Catalog
from pipelines.online.pca_noise import PCA_FILE, compute


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    catalog = Catalog.load(a.shards)
    result = compute(catalog, a.samples, a.seed)
    catalog.loc.write_atomic(PCA_FILE, (json.dumps(result, indent=1) + "\n").encode())
    print(f"eigenvalues {np.round(result['eigenvalues'], 5).tolist()} from {result['images']} images "
          f"-> {catalog.loc.uri(PCA_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
