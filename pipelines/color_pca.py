"""Eigen-decomposition of the training set's RGB covariance, stored beside the shards (AlexNet's PCA noise).

    python pipelines/color_pca.py --shards OUT [--samples 10000] [--seed 0]

Streams `--samples` images of a seeded uniform pass (all of them if fewer), decoded at reduced DCT
size (pixel colour statistics do not need full resolution), accumulates mean and covariance of the
[0, 1] RGB pixels in float64, and writes OUT/color_pca.json: eigenvalues (descending), eigenvectors
(rows), mean, std, and how many images and pixels they came from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from pipelines.online.catalog import Catalog
from pipelines.online.streams import UniformStream
from pipelines.online.transforms import ColorPCA, decode

PCA_FILE = "color_pca.json"


def compute(catalog: Catalog, samples: int, seed: int = 0) -> dict:
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    pixels = images = 0
    for draw in itertools.islice(UniformStream(catalog, seed=seed), samples):
        rgb = np.asarray(decode(draw.members["jpg"], min_side=64), dtype=np.float64).reshape(-1, 3) / 255
        total += rgb.sum(0)
        outer += rgb.T @ rgb
        pixels += len(rgb)
        images += 1
    if not images:
        raise ValueError(f"no readable image in {catalog.loc.uri()}")
    mean = total / pixels
    cov = outer / pixels - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return {"eigenvalues": values[order].tolist(), "eigenvectors": vectors[:, order].T.tolist(),
            "mean": mean.tolist(), "std": np.sqrt(np.diag(cov)).tolist(), "images": images, "pixels": pixels}


def load(shards_uri: str, std: float = 0.1) -> ColorPCA:
    catalog_loc = Catalog.load(shards_uri).loc
    if not catalog_loc.is_file(PCA_FILE):
        raise FileNotFoundError(f"{catalog_loc.uri(PCA_FILE)} is missing: run pipelines/color_pca.py --shards "
                                f"{shards_uri}")
    data = json.loads(catalog_loc.read_bytes(PCA_FILE))
    return ColorPCA(tuple(data["eigenvalues"]), tuple(tuple(v) for v in data["eigenvectors"]), std)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    catalog = Catalog.load(a.shards)
    result = compute(catalog, a.samples, a.seed)
    catalog.loc.write_atomic(PCA_FILE, (json.dumps(result, indent=1) + "\n").encode())
    print(f"eigenvalues {np.round(result['eigenvalues'], 5).tolist()} from {result['images']} images "
          f"-> {catalog.loc.uri(PCA_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
