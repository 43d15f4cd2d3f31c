"""`curves.png`: a finished run's losses, evaluation metrics and img/s against step, drawn from its MLflow history.

For people who look before they open the MLflow UI: `train.train` logs it beside `summary.json`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

CURVES_FILE = "curves.png"
FIGSIZE, DPI = (12.0, 3.6), 100  # the PNG is 1200 x 360
MAX_LINES = 8  # per panel: a conditional family logs one eval/* per attribute


def panels_of(keys: list[str]) -> dict[str, list[str]]:
    """Which logged metric goes in which panel: losses, evaluation metrics, throughput."""
    return {
        "losses": sorted(k for k in keys if k.startswith("loss/"))[:MAX_LINES],
        "evaluation": sorted(k for k in keys if k.startswith("eval/"))[:MAX_LINES],
        "img/s": [k for k in keys if k == "perf/img_per_s"],
    }


def plot_curves(history: dict[str, list[tuple[int, float]]], *, title: str, out: Path) -> Path:
    """One panel each for losses, eval/* and img/s; `history` maps a metric to its (step, value) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI)
    for ax, (name, keys) in zip(axes, panels_of(list(history)).items(), strict=True):
        for key in keys:
            points = sorted(history[key])
            style = "o-" if len(points) < 20 else "-"
            ax.plot([s for s, _ in points], [v for _, v in points], style, markersize=3, linewidth=1, label=key)
        if keys:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def run_history(mlf: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The logged history of every metric `plot_curves` draws."""
    keys = list(mlf.get_run(run_id).data.metrics)
    wanted = [k for panel in panels_of(keys).values() for k in panel]
    return {k: [(m.step, m.value) for m in mlf.get_metric_history(run_id, k)] for k in wanted}


def log_curves(tracking_uri: str, run_id: str) -> None:
    """Draw the run's curves from what MLflow holds and log them as the artifact `curves.png`."""
    from pipelines.tracking.runs import client

    mlf = client(tracking_uri)
    run = mlf.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        out = plot_curves(run_history(mlf, run_id), title=run.info.run_name or run_id, out=Path(tmp) / CURVES_FILE)
        mlf.log_artifact(run_id, str(out))
