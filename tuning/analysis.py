"""A finished (or stopped) Tune experiment read back, as `tuning/analyze.py` reports it: every trial's
history (`load_trials`), the ranked table, the best config as a runnable command, and the figures."""

from __future__ import annotations

import io
import json

import yaml

from common.storage import Location
from training.config import from_dict, to_yaml
from training.trainer import storage
from tuning.experiment import METRIC, SETUP_FILE, TRIAL_CONFIGS, trial_config
from tuning.space import space_from_dict


def load_trials(experiment: str) -> tuple[dict, list[dict]]:
    """(search setup, trials): each trial's id, status, sampled config, and per-epoch history."""
    from ray.tune import ExperimentAnalysis

    loc = Location.parse(experiment)
    if not loc.exists(SETUP_FILE):
        raise FileNotFoundError(f"{experiment}: no {SETUP_FILE}: not an experiment written by tuning/search.py")
    setup = json.loads(loc.read_bytes(SETUP_FILE))
    path, filesystem = storage(experiment)
    analysis = ExperimentAnalysis(path, storage_filesystem=filesystem)
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        history = [] if df is None or METRIC not in df else \
            df.sort_values("training_iteration")[["training_iteration", METRIC, "top5_error"]].to_dict("records")
        trials.append({"trial_id": trial.trial_id, "status": trial.status, "config": dict(trial.config),
                       "history": history})
    return setup, trials


def summarize(trials: list[dict]) -> list[dict]:
    rows = []
    for t in trials:
        h = t["history"]
        best = min(h, key=lambda r: r[METRIC]) if h else None
        rows.append({"trial_id": t["trial_id"], "status": t["status"], **t["config"], "epochs": len(h),
                     f"best_{METRIC}": best[METRIC] if best else None,
                     "best_top5_error": best["top5_error"] if best else None,
                     f"last_{METRIC}": h[-1][METRIC] if h else None})
    return sorted(rows, key=lambda r: (r[f"best_{METRIC}"] is None, r[f"best_{METRIC}"] or 0))


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no trials)"
    keys = list(rows[0])
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def best_config(setup: dict, best: dict, sampled: dict) -> str:
    """The best trial's training YAML: as it ran if recorded, else rebuilt from the space."""
    loc = Location.parse(setup["experiment"])
    rel = f"{TRIAL_CONFIGS}/{best['trial_id']}.yaml"
    data = yaml.safe_load(loc.read_bytes(rel) if loc.exists(rel) else to_yaml(trial_config(setup, sampled)))
    data["run"]["name"] = None  # a fresh run, not a resume of the trial's...
    data["run"]["storage_path"] = setup["storage_path"]  # ...beside the experiment, not inside it
    cfg = from_dict(data)
    header = (f"# Best trial {best['trial_id']} of {setup['name']}: best {METRIC} {best[f'best_{METRIC}']:.4f}\n"
              f"# Reproduce: python training/run.py --config best.yaml\n")
    return header + to_yaml(cfg)


def annotate_epochs(ax, points) -> None:
    """Label each point with its epochs run, so trials ASHA stopped early are told apart."""
    for x, y, epochs in points:
        ax.annotate(f"{epochs}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color="0.3")


def plot(setup: dict, trials: list[dict], rows: list[dict], out: Location) -> list[str]:
    """The experiment's figures (every trial's curve; error against learning rate and depth where the
    space searches them), written to `out`; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = space_from_dict(setup["space"])
    scored = [r for r in rows if r[f"best_{METRIC}"] is not None]
    figures = {"curves.png": plot_curves(plt, setup, trials, rows)}
    if "optim.lr" in space.params and scored:
        figures["error_vs_lr.png"] = plot_error_vs_lr(plt, scored)
    if space.depth and scored:
        figures["error_vs_depth.png"] = plot_error_vs_depth(plt, space, scored)
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        out.write_atomic(name, buf.getvalue())
    return list(figures)


def plot_curves(plt, setup: dict, trials: list[dict], rows: list[dict]):
    import matplotlib.ticker

    best_id = rows[0]["trial_id"] if rows else None
    fig, ax = plt.subplots(figsize=(8, 5))
    for t in trials:
        if t["history"]:
            epochs = [r["training_iteration"] for r in t["history"]]
            errors = [r[METRIC] for r in t["history"]]
            is_best = t["trial_id"] == best_id
            label = f"{t['trial_id']} (best)" if is_best else (t["trial_id"] if len(trials) <= 12 else None)
            ax.plot(epochs, errors, marker="o", lw=2.5 if is_best else 1, alpha=1 if is_best else 0.6, label=label)
    ax.set(xlabel="epoch", ylabel="validation top-1 error",
           title=f"{setup['name']}: every trial (short lines: stopped early)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if best_id:
        ax.legend(fontsize=8)
    return fig


def plot_error_vs_lr(plt, scored: list[dict]):
    fig, ax = plt.subplots(figsize=(7, 5))
    kinds = sorted({str(r.get("optim.schedule", "")) for r in scored})
    for kind in kinds:
        pts = [r for r in scored if str(r.get("optim.schedule", "")) == kind]
        ax.scatter([r["optim.lr"] for r in pts], [r[f"best_{METRIC}"] for r in pts], s=40,
                   label=f"schedule: {kind}" if kind else None)
        annotate_epochs(ax, [(r["optim.lr"], r[f"best_{METRIC}"], r["epochs"]) for r in pts])
    ax.set_xscale("log")
    ax.set(xlabel="initial learning rate", ylabel="best validation top-1 error",
           title="error vs learning rate (labels: epochs run)")
    ax.grid(alpha=0.3)
    if kinds != [""]:
        ax.legend()
    return fig


def plot_error_vs_depth(plt, space, scored: list[dict]):
    order = space.depth_order
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [order.index(str(r[space.depth])) for r in scored]
    ax.scatter(xs, [r[f"best_{METRIC}"] for r in scored], s=40)
    annotate_epochs(ax, [(x, r[f"best_{METRIC}"], r["epochs"]) for x, r in zip(xs, scored)])
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set(xlabel=f"depth ({space.depth}, shallow -> deep)", ylabel="best validation top-1 error",
           title="error vs depth (labels: epochs run)")
    ax.grid(alpha=0.3)
    return fig
