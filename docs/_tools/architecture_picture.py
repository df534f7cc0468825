"""Draw docs/architecture.svg: the hub's FL server, a trust's FL client, and the FLIP services.

The picture shows the server widgets, the client executors and filters, and the services each side
talks to (flip-api and S3 at the Central Hub; data-access-api and imaging-api at a trust). Run it
after changing the components (the picture is committed; the docs build does not run it)::

    .venv/bin/python docs/_tools/architecture_picture.py

The output is deterministic (no date, fixed ids), so an unchanged picture gives an unchanged file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "architecture.svg"

HUB = "#e8f0fb"
TRUST = "#eaf6ec"
NVFLARE = "#ffffff"
SERVICE = "#fff4e0"
EDGE = "#44546a"


def box(
    ax: plt.Axes, x: float, y: float, w: float, h: float, color: str, title: str, lines: tuple[str, ...] = ()
) -> None:
    """A rounded box with a bold title and one line per entry below it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=color, ec=EDGE, lw=1.2))
    ax.text(x + 0.15, y + h - 0.22, title, fontsize=10.5, fontweight="bold", va="top", color="#1d2733")
    for i, line in enumerate(lines):
        ax.text(x + 0.2, y + h - 0.62 - i * 0.3, line, fontsize=8.6, va="top", family="monospace", color="#1d2733")


def arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], label: str, both: bool = False) -> None:
    """An arrow with a label at its middle."""
    style = "<|-|>" if both else "-|>"
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, lw=1.2, color=EDGE))
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx, my + 0.12, label, fontsize=8, ha="center", va="bottom", color="#1d2733")


def draw(out: Path) -> None:
    """Draw the picture into ``out`` (SVG or PNG, by its suffix)."""
    plt.rcParams["svg.hashsalt"] = "flip-nvflare-architecture"
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(13.6, 8.2))
    ax.set_xlim(0, 13.6)
    ax.set_ylim(0, 8.2)
    ax.axis("off")

    # Central Hub
    ax.add_patch(FancyBboxPatch((0.2, 0.2), 5.4, 7.8, boxstyle="round,pad=0.02", fc=HUB, ec=EDGE, lw=1.5))
    ax.text(0.4, 7.8, "Central Hub", fontsize=13, fontweight="bold", va="top")
    box(
        ax,
        0.45,
        2.35,
        4.9,
        5.0,
        NVFLARE,
        "FL server (NVFlare job)",
        (
            "FlipBackend (id flip): dev | prod",
            "  HubSession + HubDelivery (queue)",
            "widgets (flip_nvflare.components):",
            "  StatusReporter   MetricsForwarder",
            "  ProgressReporter ExceptionForwarder",
            "  SiteLossReporter PrivacyLedger",
            "  EvaluationReporter MlflowTracker",
            "  Validation/EvaluationJsonGenerator",
            "  ResultsUploader (+ provenance.json)",
            "workflows: InitTraining | InitEvaluation",
            "  -> ScatterAndGather | EvaluateModels",
            "  -> CleanupClients",
            "server process: JobWatcher",
        ),
    )
    box(ax, 0.45, 0.45, 2.4, 1.5, SERVICE, "flip-api", ("statuses, metrics,", "logs (H1 / H2)"))
    box(ax, 2.95, 0.45, 2.4, 1.5, SERVICE, "S3 bucket", ("results zip per", "model and run"))
    ax.text(4.25, 2.17, "results zip", fontsize=8, va="center")

    # Trust
    ax.add_patch(FancyBboxPatch((7.8, 0.2), 5.4, 7.8, boxstyle="round,pad=0.02", fc=TRUST, ec=EDGE, lw=1.5))
    ax.text(8.0, 7.8, "Trust (one per hospital)", fontsize=13, fontweight="bold", va="top")
    box(
        ax,
        8.05,
        2.35,
        4.9,
        5.0,
        NVFLARE,
        "FL client (NVFlare job)",
        (
            "FlipBackend (id flip): dev | prod",
            "executors (flip_nvflare.executors):",
            "  CohortPreparer -> manifest",
            "  TrainerRunner    -> FLIP_TRAINER",
            "  ValidatorRunner  -> FLIP_VALIDATOR",
            "  EvaluatorRunner  -> FLIP_EVALUATOR",
            "  ClientApiRunner  -> Client API script",
            "  ImageCleanup",
            "filters: PercentilePrivacy,",
            "  GaussianPrivacy, MetricPolicy",
            "Sanitizer: failure text",
            "app code: FLIP(), send_metrics_value",
        ),
    )
    box(ax, 8.05, 0.45, 2.4, 1.5, SERVICE, "data-access-api", ("cohort SQL ->", "dataframe"))
    box(ax, 10.55, 0.45, 2.4, 1.5, SERVICE, "imaging-api", ("images of an accession", "-> IMAGES_DIR/NET_ID"))

    arrow(ax, (5.5, 5.6), (8.0, 5.6), "tasks, global model")
    arrow(ax, (8.0, 4.4), (5.5, 4.4), "filtered updates,\nmetrics, sanitized errors")
    arrow(ax, (1.65, 2.3), (1.65, 2.0), "")
    ax.text(1.75, 2.17, "HubDelivery: ordered, retried", fontsize=8, va="center")
    arrow(ax, (4.15, 2.3), (4.15, 2.0), "")
    arrow(ax, (9.25, 2.3), (9.25, 2.0), "")
    arrow(ax, (11.75, 2.3), (11.75, 2.0), "")
    ax.text(9.35, 2.17, "trust key; never the hub key", fontsize=8, va="center")
    ax.text(
        6.8,
        7.15,
        "patient data never\nleaves the trust",
        fontsize=8.5,
        ha="center",
        va="center",
        style="italic",
        color="#7a2e2e",
    )
    fig.savefig(out, bbox_inches="tight", metadata={"Date": None} if out.suffix == ".svg" else None)
    plt.close(fig)


def main() -> None:
    """Write the picture (default docs/architecture.svg)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
