import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare_demo.report import RunRecord, from_dev_ledger, render

MODEL = "d3e0f11b-2c4a-4d5e-9f60-7a8b9c0d1e2f"


def _ledger(tmp_path: Path, accuracies: dict[str, list[float]]) -> Path:
    """A dev ledger written by the real dev backend, as the server widgets would write it."""
    out = tmp_path / "flip_dev"
    backend = FLIPStandardDev(output_dir=out)
    for status in ("INITIATED", "PREPARED", "TRAINING_STARTED"):
        backend.update_status(MODEL, status)
    for site, values in accuracies.items():
        for round_, value in enumerate(values):
            backend.send_metrics(site, MODEL, "val_accuracy", value, round_)
            backend.send_metrics(site, MODEL, "train_loss", 1.0 / (round_ + 1), round_)
    results = tmp_path / "results"
    results.mkdir()
    (results / "FL_global_model.pt").write_bytes(b"model")
    cross = {
        s: {
            "SRV_FL_global_model.pt": {"val_accuracy": v[-1]},
            "SRV_best_FL_global_model.pt": {"error": "EXECUTION_EXCEPTION"},
        }
        for s, v in accuracies.items()
    }
    (results / "cross_val_results.json").write_text(json.dumps(cross))
    backend.upload_results_to_s3(results, MODEL)
    backend.update_status(MODEL, "RESULTS_UPLOADED")
    backend.send_metrics("site-9", "11111111-1111-1111-1111-111111111111", "val_accuracy", 0.1, 0)  # another model
    return out


def test_dev_ledger_report(tmp_path: Path) -> None:
    record = from_dev_ledger(_ledger(tmp_path, {"site-1": [0.5, 0.8, 0.95], "site-2": [0.45, 0.9, 1.0]}), MODEL)
    assert [s.status for s in record.statuses] == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    assert record.statuses[0].seconds == 0.0
    assert record.sites() == ["site-1", "site-2"]
    assert record.key_metric_by_round() == {0: 0.475, 1: 0.8500000000000001, 2: 0.975}
    assert record.learned()
    assert record.results_files == ["FL_global_model.pt", "cross_val_results.json"]
    assert record.results_location and record.results_location.endswith(".zip")
    text = render(record, seconds=12.3)
    assert "  site    round  val_accuracy  train_loss" in text
    assert "  site-2  2      1.000         0.333" in text
    assert "mean val_accuracy by round: 0.47 -> 0.85 -> 0.97 (chance 0.50): rose above chance" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if "FL_global_model " in line}
    assert rows == {"FL_global_model": ["0.950", "1.000"], "best_FL_global_model": ["EXECUTION_EXCEPTION"] * 2}
    assert "Final status: RESULTS_UPLOADED; run took 12 s" in text


def test_flat_accuracy_did_not_learn(tmp_path: Path) -> None:
    record = from_dev_ledger(_ledger(tmp_path, {"site-1": [0.5, 0.52], "site-2": [0.5, 0.48]}), MODEL)
    assert not record.learned()
    assert "did NOT rise above chance" in render(record)


def test_empty_record_renders() -> None:
    text = render(RunRecord(mode="prod", model_id=MODEL))
    assert "(no status received)" in text and "(no metric received)" in text
    assert "Results zip: none was stored" in text and "Final status: none" in text
    assert not RunRecord(mode="dev", model_id=MODEL).learned()


def test_zip_reader_finds_nested_validation_json(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("flip_results/cross_val_results.json", json.dumps({"site-1": {"m": {"val_accuracy": 1}}}))
    from flip_nvflare_demo import report

    record = RunRecord(mode="dev", model_id=MODEL)
    report._read_zip(record, buffer.getvalue())
    assert record.cross_site == {"site-1": {"m": {"val_accuracy": 1}}}


# ---------------------------------------------------------------------- the PNG


def test_the_metrics_figure_has_a_panel_per_metric_and_a_line_per_trust(tmp_path: Path) -> None:
    from flip_nvflare_demo.report import metrics_figure

    record = from_dev_ledger(_ledger(tmp_path, {"site-1": [0.5, 0.8, 0.9], "site-2": [0.4, 0.7, 1.0]}), MODEL)
    figure = metrics_figure(record)
    assert figure is not None
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["val_accuracy", "train_loss"]
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == ["Trust_1 (site-1)", "Trust_2 (site-2)"]
        assert all(np.asarray(line.get_xdata()).tolist() == [0, 1, 2] for line in ax.get_lines())
    assert np.asarray(axes[0].get_lines()[1].get_ydata()).tolist() == [0.4, 0.7, 1.0]
    assert metrics_figure(RunRecord(mode="dev", model_id=MODEL)) is None


def test_with_plot_writes_the_report_and_a_png_next_to_it(tmp_path: Path) -> None:
    import struct

    from flip_nvflare_demo.report import PLOT_FILE, REPORT_FILE, with_plot

    record = from_dev_ledger(_ledger(tmp_path, {"site-1": [0.5, 0.9], "site-2": [0.5, 0.8]}), MODEL)
    out = tmp_path / "demo"
    text = with_plot(render, out)(record, seconds=3.0)
    png = (out / PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (840, 320)  # two panels of 4.2 x 3.2 inches at 100 dpi
    assert (out / REPORT_FILE).read_text() == render(record, seconds=3.0) + "\n"
    assert text.endswith(f"Report: {out / REPORT_FILE}\nMetrics plot: {out / PLOT_FILE}")


def test_without_matplotlib_the_report_says_how_to_get_the_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from flip_nvflare_demo.report import PLOT_FILE, with_plot

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    record = from_dev_ledger(_ledger(tmp_path, {"site-1": [0.5, 0.9], "site-2": [0.5, 0.8]}), MODEL)
    text = with_plot(render, tmp_path / "demo")(record)
    assert "matplotlib is not installed (pip install 'flip-nvflare[plots]'" in text.splitlines()[-1]
    assert not (tmp_path / "demo" / PLOT_FILE).exists() and "Final status: RESULTS_UPLOADED" in text
