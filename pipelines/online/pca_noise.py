"""The eigen-decomposition AlexNet's PCA colour noise draws from: the training set's RGB covariance,
computed from the shards (`compute`, which `pipelines/color_pca.py` runs), stored beside them as
`color_pca.json`, and read back for the training transform (`load`); the same pass's mean pixel is what
`data.normalize: mean_pixel` subtracts (`load_mean`)."""

from __future__ import annotations

import itertools
import json

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


def _read(shards_uri: str) -> dict:
    catalog_loc = Catalog.load(shards_uri).loc
    if not catalog_loc.is_file(PCA_FILE):
        raise FileNotFoundError(f"{catalog_loc.uri(PCA_FILE)} is missing: run pipelines/color_pca.py --shards "
                                f"{shards_uri}")
    return json.loads(catalog_loc.read_bytes(PCA_FILE))


def load(shards_uri: str, std: float = 0.1, scale: str = "eigenvalue") -> ColorPCA:
    return parse(_read(shards_uri), std, scale)[0]


def load_mean(shards_uri: str) -> tuple[float, float, float]:
    """The training pixels' RGB mean, in [0, 1] (the papers' "mean pixel", `data.normalize: mean_pixel`)."""
    return parse(_read(shards_uri))[1]


def check(shards_uri: str) -> None:
    """TRAIN_SHARDS/color_pca.json is there and holds what `load` and `load_mean` read (one read)."""
    parse(_read(shards_uri))


def parse(data: dict, std: float = 0.1, scale: str = "eigenvalue") -> tuple[ColorPCA, tuple[float, float, float]]:
    """color_pca.json's colour noise and mean pixel; KeyError, TypeError or ValueError when malformed."""
    pca = ColorPCA(tuple(data["eigenvalues"]), tuple(tuple(v) for v in data["eigenvectors"]), std, scale)
    r, g, b = (float(v) for v in data["mean"])
    return pca, (r, g, b)
