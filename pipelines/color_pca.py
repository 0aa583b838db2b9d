"""Eigen-decomposition of the training set's RGB covariance, stored beside the shards (AlexNet's PCA noise).

    python pipelines/color_pca.py --shards OUT [--images 10000] [--seed 0]
    places-color-pca ...                  (the same, installed with the package)

Streams `--images` images of a seeded uniform pass (all of them if fewer), decoded at reduced DCT
size (pixel colour statistics do not need full resolution), accumulates mean and covariance of the
[0, 1] RGB pixels in float64, and writes OUT/color_pca.json: eigenvalues (descending), eigenvectors
(rows), mean, std, and how many images and pixels they came from.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from common.arguments import positive_int
from common.console import report_failure
from common.tool_settings import add_old_spelling, new_parser, parse
from pipelines.online.catalog import Catalog
from pipelines.online.pca_noise import PCA_FILE, compute


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("--shards", required=True, help="the training split's shard folder or URI; color_pca.json is "
                                                   "written there")
    p.add_argument("--images", type=positive_int, default=10000, help="images to take the statistics from")
    p.add_argument("--seed", type=int, default=0, help="seeds which images the uniform pass takes")
    add_old_spelling(p, "--samples", "--images")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    try:
        catalog = Catalog.load(a.shards)
        result = compute(catalog, a.images, a.seed)
    except (OSError, ValueError) as exc:
        print(f"color_pca.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("color_pca.py", exc, a.verbose)
    catalog.loc.write_atomic(PCA_FILE, (json.dumps(result, indent=1) + "\n").encode())
    print(f"eigenvalues {np.round(result['eigenvalues'], 5).tolist()} from {result['images']} images "
          f"-> {catalog.loc.uri(PCA_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
