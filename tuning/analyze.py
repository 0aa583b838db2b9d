"""Read a Tune experiment written by tuning/search.py.

    python tuning/analyze.py EXPERIMENT_PATH [--out DIR]
    places-analyze ...                    (the same, installed with the package)

Prints the trials sorted by their best validation top-1 error and writes, to DIR (default:
EXPERIMENT_PATH/analysis for a local experiment, ./analysis-NAME otherwise):
- trials.csv: one row per trial (its sampled settings, epochs run, best and last errors);
- best.yaml: the best trial's whole training config, runnable as
  `python training/run.py --config DIR/best.yaml` (a fresh run name; warm start kept);
- curves.png: validation top-1 error per epoch for every trial (ASHA's early stops show as short lines);
- error_vs_lr.png, error_vs_depth.png: each trial's best error against its initial learning rate
  and against its depth (in the space's shallow -> deep order), where the space searches them.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from common.console import report_failure
from common.storage import Location
from common.tool_settings import new_parser, parse
from training.config import absolute
from tuning.analysis import best_config, format_table, load_trials, plot, summarize
from tuning.experiment import METRIC


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("experiment", help="the experiment folder (run.storage_path/NAME), local or s3://")
    p.add_argument("--out", help="where to write the analysis (default: EXPERIMENT/analysis, or ./analysis-NAME)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    try:
        return analyze(a)
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("analyze.py", exc, a.verbose)


def analyze(a: argparse.Namespace) -> int:
    experiment = absolute(a.experiment.rstrip("/"))
    try:
        setup, trials = load_trials(experiment)
    except (FileNotFoundError, ValueError) as exc:
        print(f"analyze.py: error: {exc}", file=sys.stderr)
        return 2
    rows = summarize(trials)
    out = Location.parse(a.out or (f"{experiment}/analysis" if "://" not in experiment
                                   else f"analysis-{setup['name']}"))
    out.make_dirs()
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    out.write_atomic("trials.csv", buf.getvalue().encode())
    print(format_table(rows))
    if rows and rows[0][f"best_{METRIC}"] is not None:
        sampled = next(t["config"] for t in trials if t["trial_id"] == rows[0]["trial_id"])
        out.write_atomic("best.yaml", best_config(setup, rows[0], sampled).encode())
        print(f"\nbest trial {rows[0]['trial_id']}: {METRIC} {rows[0][f'best_{METRIC}']:.4f}; "
              f"its config: {out.uri('best.yaml')}")
    for name in plot(setup, trials, rows, out):
        print(f"plot: {out.uri(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
