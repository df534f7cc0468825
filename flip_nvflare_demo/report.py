"""The demo's report: status timeline, per-site per-round metrics, cross-site validation, results zip.

A :class:`RunRecord` is what the hub saw of one run. It is read either from the dev backend's
ledger (``status.jsonl``, ``metrics.jsonl`` and the results zip in the server's ``flip_dev``
folder) or from the emulator's record and the zip in its S3 bucket, then rendered as text.

:func:`with_plot` adds the pictures: the text report is saved as ``report.txt`` in the demo's
working folder, next to ``metrics.png``, one panel per metric with a line per trust over the
rounds (:func:`metrics_figure`). The plot needs matplotlib (the ``plots`` extra), imported only
then; without it the report says how to get the PNG and the demo goes on.
"""

from __future__ import annotations

import io
import json
import statistics
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.jobs.check import natural_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from flip_emulator.handle import EmulatorHandle

#: The metric the demo app reports for the global model at each round (the key metric).
KEY_METRIC = "val_accuracy"
#: Accuracy of guessing on the demo's balanced labels.
CHANCE = 0.5
#: What the final accuracy must reach for the demo to count as having learned.
LEARNED = 0.75
#: Up to this many sites the cross-site table has a column per site; beyond, a row per site.
WIDE_TABLE_SITES = 4
VALIDATION_JSON = "cross_val_results.json"
#: What the demo writes into its working folder.
REPORT_FILE = "report.txt"
PLOT_FILE = "metrics.png"
#: Panels per row of the metrics plot.
PLOT_COLUMNS = 3
#: How to get the plot when matplotlib is missing.
PLOTS_HINT = "pip install 'flip-nvflare[plots]'"


@dataclass(frozen=True)
class StatusEvent:
    """One status the hub received, with seconds since the first one."""

    status: str
    seconds: float


@dataclass(frozen=True)
class MetricValue:
    """One metric value the hub received."""

    site: str
    round: int
    label: str
    value: float
    trust: str | None = None


@dataclass
class RunRecord:
    """What the hub received for one run.

    Attributes:
        mode: ``dev`` or ``prod``.
        model_id: The model's id.
        statuses: Statuses in arrival order.
        metrics: Metric values in arrival order.
        cross_site: Data site -> model -> metric -> value (from the results zip).
        results_location: Where the results zip is (a path or an ``s3://`` URI), if any.
        results_files: The files in the results zip.
    """

    mode: str
    model_id: str
    statuses: list[StatusEvent] = field(default_factory=list)
    metrics: list[MetricValue] = field(default_factory=list)
    cross_site: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    results_location: str | None = None
    results_files: list[str] = field(default_factory=list)

    @property
    def final_status(self) -> str | None:
        """The last status received."""
        return self.statuses[-1].status if self.statuses else None

    def sites(self) -> list[str]:
        """Sites that sent metrics, in natural order (``site-2`` before ``site-10``)."""
        return sorted({m.site for m in self.metrics}, key=natural_key)

    def labels(self) -> list[str]:
        """Metric labels received, the key metric first, then by name."""
        return sorted({m.label for m in self.metrics}, key=lambda label: (label != KEY_METRIC, label))

    def trust_of(self, site: str) -> str | None:
        """The trust a site's metrics were reported under, when the hub said."""
        return next((m.trust for m in self.metrics if m.site == site and m.trust), None)

    def series(self, label: str, site: str) -> dict[int, float]:
        """Round -> value of ``label`` at ``site`` (the last value if a round has several)."""
        return {m.round: m.value for m in self.metrics if m.label == label and m.site == site}

    def key_metric_by_round(self) -> dict[int, float]:
        """Round -> mean over sites of the global model's ``val_accuracy``."""
        rounds: dict[int, list[float]] = {}
        for site in self.sites():
            for round_, value in self.series(KEY_METRIC, site).items():
                rounds.setdefault(round_, []).append(value)
        return {r: statistics.fmean(v) for r, v in sorted(rounds.items())}

    def learned(self) -> bool:
        """Whether the global model's accuracy rose above chance over the run.

        True when the last round's mean ``val_accuracy`` is at least :data:`LEARNED` and higher
        than the first round's, or when the final model's cross-site accuracy is at least
        :data:`LEARNED` everywhere and the first round's mean was below it.
        """
        by_round = self.key_metric_by_round()
        if len(by_round) < 2:
            return False
        first, last = by_round[min(by_round)], by_round[max(by_round)]
        if last >= LEARNED and last > first:
            return True
        finals = [v for v in self._final_model_accuracies() if v is not None]
        return bool(finals) and min(finals) >= LEARNED and first < LEARNED

    def _final_model_accuracies(self) -> list[float | None]:
        values: list[float | None] = []
        for models in self.cross_site.values():
            for model, result in models.items():
                if "best" not in model and isinstance(result, dict):
                    number = result.get(KEY_METRIC)
                    values.append(float(number) if isinstance(number, (int, float)) else None)
        return values


# ---------------------------------------------------------------------- reading


def from_dev_ledger(output_dir: str | Path, model_id: str) -> RunRecord:
    """Read a run from the dev backend's output folder (``<server run folder>/flip_dev``)."""
    folder = Path(output_dir)
    record = RunRecord(mode="dev", model_id=model_id)
    stamps: list[tuple[str, datetime]] = []
    for row in _jsonl(folder / "status.jsonl"):
        if row.get("model_id") == model_id:
            stamps.append((str(row["status"]), datetime.fromisoformat(str(row["time"]))))
    if stamps:
        start = stamps[0][1]
        record.statuses = [StatusEvent(s, (t - start).total_seconds()) for s, t in stamps]
    for row in _jsonl(folder / "metrics.jsonl"):
        if row.get("model_id") == model_id:
            site = str(row.get("fl_client_name") or row.get("trust"))
            trust = str(row["trust"]) if row.get("trust") else None
            record.metrics.append(
                MetricValue(site, int(row["global_round"]), str(row["label"]), float(row["result"]), trust)
            )
    zips = sorted((folder / "results" / model_id).glob("*.zip"))
    if zips:
        record.results_location = str(zips[-1].resolve())
        _read_zip(record, zips[-1].read_bytes())
    return record


def from_emulator(handle: EmulatorHandle, model_id: str) -> RunRecord:
    """Read a run from what the emulated hub recorded and the results zip in its S3 bucket."""
    records = handle.records(model_id)
    record = RunRecord(mode="prod", model_id=model_id)
    applied = [s for s in records.statuses if s.applied]
    if applied:
        start = applied[0].received_at
        record.statuses = [StatusEvent(s.status, s.received_at - start) for s in applied]
    for metric in records.metrics:
        site = metric.fl_client_name or metric.trust or "?"
        record.metrics.append(MetricValue(site, metric.global_round, metric.label, metric.result, metric.trust))
    keys = sorted(handle.results(model_id))
    if keys and handle.bucket and handle.s3_endpoint:
        bucket = handle.bucket.removeprefix("s3://").split("/", 1)[0]
        record.results_location = f"s3://{bucket}/{keys[-1]}"
        _read_zip(record, read_s3_object(handle.env(), bucket, keys[-1]))
    return record


def read_s3_object(env: dict[str, str], bucket: str, key: str) -> bytes:
    """The bytes of one object of an S3-compatible store, with the endpoint and keys of a job's ``env``."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION"),
    )
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _read_zip(record: RunRecord, data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record.results_files = sorted(archive.namelist())
        name = next((n for n in record.results_files if Path(n).name == VALIDATION_JSON), None)
        if name is not None:
            content = json.loads(archive.read(name))
            if isinstance(content, dict):
                record.cross_site = content


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


# ---------------------------------------------------------------------- rendering


def render(record: RunRecord, *, seconds: float | None = None) -> str:
    """The report as text."""
    sites = record.sites()
    lines = [f"FLIP demo report ({record.mode} mode), model {record.model_id}", ""]
    lines += ["Status timeline (as the hub received it)"]
    if record.statuses:
        lines += [f"  {event.seconds:7.1f} s  {event.status}" for event in record.statuses]
    else:
        lines += ["  (no status received)"]
    lines += ["", "Metrics per site and round (val_accuracy: the global model on the site's validation split)"]
    lines += _metrics_table(record, sites)
    by_round = record.key_metric_by_round()
    if by_round:
        trend = " -> ".join(f"{value:.2f}" for value in by_round.values())
        verdict = "rose above chance" if record.learned() else "did NOT rise above chance"
        lines += [f"  mean val_accuracy by round: {trend} (chance {CHANCE:.2f}): {verdict}"]
    lines += ["", "Cross-site validation (each server model on each site's validation split)"]
    lines += _cross_site_table(record)
    lines += [""]
    if record.results_location:
        lines += [f"Results zip: {record.results_location}", f"  contains: {', '.join(record.results_files)}"]
    else:
        lines += ["Results zip: none was stored"]
    summary = f"Final status: {record.final_status or 'none'}"
    if seconds is not None:
        summary += f"; run took {seconds:.0f} s"
    lines += ["", summary]
    return "\n".join(lines)


def _metrics_table(record: RunRecord, sites: list[str]) -> list[str]:
    labels = record.labels()
    if not labels:
        return ["  (no metric received)"]
    rows = [["site", "round", *labels]]
    for site in sites:
        series = {label: record.series(label, site) for label in labels}
        rounds = sorted({r for values in series.values() for r in values})
        for round_ in rounds:
            rows.append([site, str(round_), *[_number(series[label].get(round_)) for label in labels]])
    return _table(rows)


def _cross_site_table(record: RunRecord) -> list[str]:
    if not record.cross_site:
        return ["  (no cross-site validation results)"]
    sites = sorted(record.cross_site, key=natural_key)
    models = sorted({model for results in record.cross_site.values() for model in results})

    def cell(site: str, model: str) -> str:
        result = record.cross_site[site].get(model)
        value = result.get(KEY_METRIC) if isinstance(result, dict) else None
        return _number(value) if value is not None else str((result or {}).get("error", "-"))

    names = [model.removeprefix("SRV_").removesuffix(".pt") for model in models]
    if len(sites) <= WIDE_TABLE_SITES:  # one column per site
        rows = [["model", *sites]]
        rows += [[name, *(cell(site, m) for site in sites)] for name, m in zip(names, models, strict=True)]
    else:  # one row per site, so many sites still fit the terminal
        rows = [["site", *names], *([site, *(cell(site, m) for m in models)] for site in sites)]
    return [*_table(rows), f"  ({KEY_METRIC}; models are the final and the best global model)"]


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


# ---------------------------------------------------------------------- pictures


def metrics_figure(record: RunRecord) -> Figure | None:
    """One panel per metric, one line per trust over the rounds; None when no metric was received.

    Uses matplotlib's object API (no pyplot, no global backend): the caller saves or inspects it.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = record.labels()
    if not labels:
        return None
    sites = record.sites()
    columns = min(PLOT_COLUMNS, len(labels))
    rows = -(-len(labels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, label in enumerate(labels):
        ax = axes[index // columns][index % columns]
        for site in sites:
            series = record.series(label, site)
            if not series:
                continue
            rounds = sorted(series)
            trust = record.trust_of(site)
            name = f"{trust} ({site})" if trust and trust != site else site
            ax.plot(rounds, [series[r] for r in rounds], marker="o", label=name)
        ax.set_title(label)
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for index in range(len(labels), rows * columns):
        figure.delaxes(axes[index // columns][index % columns])
    figure.suptitle(f"FLIP demo, model {record.model_id}: metrics per trust and round")
    return figure


def save_metrics_plot(record: RunRecord, folder: str | Path) -> str:
    """Write ``metrics.png`` into ``folder`` and return the report line saying where (or why not).

    Without matplotlib nothing is written and the line says how to get it; the demo goes on.
    """
    target = Path(folder) / PLOT_FILE
    try:
        figure = metrics_figure(record)
    except ImportError:
        return f"Metrics plot: not drawn, matplotlib is not installed ({PLOTS_HINT} draws {target} next time)"
    if figure is None:
        return "Metrics plot: none (no metric received)"
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    return f"Metrics plot: {target}"


def with_plot(render_text: Callable[..., str], folder: str | Path) -> Callable[..., str]:
    """``render_text`` that also saves the report as ``report.txt`` and the plot as ``metrics.png`` in ``folder``.

    Args:
        render_text: Renders a :class:`RunRecord` as text (:func:`render`).
        folder: The demo's working folder.

    Returns:
        A renderer with :func:`render`'s signature whose text ends with where the files are.
    """

    def render_and_plot(record: RunRecord, *, seconds: float | None = None) -> str:
        text = render_text(record, seconds=seconds)
        report = Path(folder) / REPORT_FILE
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text + "\n", encoding="utf-8")
        return "\n".join([text, "", f"Report: {report}", save_metrics_plot(record, folder)])

    return render_and_plot
