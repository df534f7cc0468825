"""ResultsUploader (with the StatusReporter) on a mock engine: what is gathered, uploaded, deleted, reported."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.event_type import EventType
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.provenance import PROVENANCE_FILE
from flip_nvflare.components.results import SUMMARY_FILE, ResultsUploader
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.constants import FlipEvents, FlipProps
from flip_nvflare.errors import FlipConfigError, FlipResultsUploadError
from tests.components.fakes import RecordingHub
from tests.engine import MODEL_ID, FakeEngine, hub_calls, server_job


class UploadingHub(RecordingHub):
    """Records each upload: the files in the folder and the run summary; ``refuse`` makes it fail."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.uploads: list[tuple[str, list[str], dict[str, Any]]] = []

    def upload_results_to_s3(self, results_folder: str | Path, model_id: str) -> str:
        folder = Path(results_folder)
        files = sorted(p.name for p in folder.iterdir())
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        self.uploads.append((model_id, files, summary))
        if self.refuse:
            raise FlipResultsUploadError("S3 said no")
        return f"s3://results/{model_id}/run.zip"


def make_run_folder(run_dir: Path) -> None:
    for name in ("app_server/FL_global_model.pt", "app_server/best_FL_global_model.pt", "models/extra.pth"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(b"weights")
    (run_dir / "app_server" / "config.json").write_text("{}")  # not a model: never gathered
    (run_dir / "cross_site_val" / "site-1").mkdir(parents=True)
    (run_dir / "flip_results").mkdir()
    (run_dir / "flip_results" / "cross_val_results.json").write_text("{}")


def statuses(hub: RecordingHub) -> list[str]:
    return [call[1] for call in hub_calls(hub, "status")]


def test_a_completed_run_is_gathered_uploaded_then_removed(tmp_path: Path) -> None:
    reporter, uploader = StatusReporter(), ResultsUploader()
    hub = UploadingHub()
    engine, _ = server_job(tmp_path, reporter, uploader, hub=hub)  # the reporter ends its run first
    make_run_folder(engine.run_dir)

    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED)
    engine.fire(AppEventType.AFTER_AGGREGATION)
    engine.fire(AppEventType.AFTER_AGGREGATION)
    engine.end_run()

    assert len(hub.uploads) == 1
    model_id, files, summary = hub.uploads[0]
    assert model_id == MODEL_ID
    assert files == [
        "FL_global_model.pt",
        "best_FL_global_model.pt",
        "cross_val_results.json",
        "extra.pth",
        PROVENANCE_FILE,
        SUMMARY_FILE,
    ]
    assert summary["outcome"] == "completed" and summary["rounds_aggregated"] == 2
    assert summary["job_id"] == engine.job_id and summary["model_id"] == MODEL_ID
    assert summary["files"] == files
    assert sorted(Path(p).name for p in summary["gathered_from"]) == [
        "FL_global_model.pt",
        "best_FL_global_model.pt",
        "extra.pth",
    ]
    run_dir = engine.run_dir
    assert not (run_dir / "flip_results").exists()
    assert not (run_dir / "cross_site_val").exists()
    assert not (run_dir / "app_server" / "FL_global_model.pt").exists()
    assert not (run_dir / "models" / "extra.pth").exists()
    assert (run_dir / "app_server" / "config.json").exists()
    uploaded = engine.fired(FlipEvents.RESULTS_UPLOADED)
    assert len(uploaded) == 1
    assert uploaded[0].props[FlipProps.RESULTS_LOCATION] == f"s3://results/{MODEL_ID}/run.zip"
    assert uploaded[0].props[FlipProps.RESULTS_FLIP_ID] == "flip"
    assert statuses(hub) == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_a_failed_upload_deletes_nothing_and_reports_the_failure(tmp_path: Path) -> None:
    hub = UploadingHub(refuse=True)
    engine, _ = server_job(tmp_path, ResultsUploader(), StatusReporter(), hub=hub)
    make_run_folder(engine.run_dir)

    engine.start_run()
    engine.end_run()

    assert len(hub.uploads) == 1
    run_dir = engine.run_dir
    assert (run_dir / "flip_results" / SUMMARY_FILE).exists()
    assert (run_dir / "flip_results" / "FL_global_model.pt").exists()
    assert (run_dir / "app_server" / "FL_global_model.pt").exists() and (run_dir / "cross_site_val").exists()
    failed = engine.fired(FlipEvents.RESULTS_UPLOAD_FAILED)
    assert len(failed) == 1 and failed[0].props[FlipProps.RESULTS_LOCATION] is None
    assert engine.fired(FlipEvents.RESULTS_UPLOADED) == []
    assert statuses(hub) == ["INITIATED", "RESULTS_UPLOAD_FAILED"]


@pytest.mark.parametrize(("outcome", "final"), [("aborted", "STOPPED"), ("failed", "ERROR")])
def test_a_run_that_did_not_complete_keeps_its_results_and_uploads_nothing(
    tmp_path: Path, outcome: str, final: str
) -> None:
    hub = UploadingHub()
    engine, _ = server_job(tmp_path, ResultsUploader(), StatusReporter(), hub=hub)
    make_run_folder(engine.run_dir)

    engine.start_run()
    if outcome == "aborted":
        engine.abort_signal.trigger("stopped by the admin")
    else:
        engine.fire(EventType.FATAL_SYSTEM_ERROR)
    engine.end_run()

    assert hub.uploads == []
    summary = json.loads((engine.run_dir / "flip_results" / SUMMARY_FILE).read_text())
    assert summary["outcome"] == outcome
    assert (engine.run_dir / "app_server" / "FL_global_model.pt").exists()
    assert engine.fired(FlipEvents.RESULTS_UPLOADED) == engine.fired(FlipEvents.RESULTS_UPLOAD_FAILED) == []
    assert statuses(hub) == ["INITIATED", final]


def test_what_is_included_and_removed_can_be_configured(tmp_path: Path) -> None:
    hub = UploadingHub()
    uploader = ResultsUploader(
        results_dir="out", include=["app_server/*.pt", "logs/*.txt"], remove_after_upload=["logs"]
    )
    engine, _ = server_job(tmp_path, uploader, hub=hub)
    make_run_folder(engine.run_dir)
    (engine.run_dir / "logs").mkdir()
    (engine.run_dir / "logs" / "train.txt").write_text("loss 1.0")

    engine.start_run()
    engine.end_run()

    assert [files for _m, files, _s in hub.uploads] == [
        ["FL_global_model.pt", "best_FL_global_model.pt", PROVENANCE_FILE, SUMMARY_FILE, "train.txt"]
    ]
    run_dir = engine.run_dir
    assert not (run_dir / "out").exists() and not (run_dir / "logs").exists()
    # only what remove_after_upload names is removed besides the results folder
    assert (run_dir / "app_server" / "FL_global_model.pt").exists() and (run_dir / "cross_site_val").exists()


def test_files_with_the_same_name_and_runs_without_models_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = UploadingHub()
    engine, _ = server_job(tmp_path, ResultsUploader(include=["a/*.pt", "b/*.pt", "none/*"]), hub=hub)
    for folder in ("a", "b"):
        (engine.run_dir / folder).mkdir(parents=True)
        (engine.run_dir / folder / "model.pt").write_text(folder)

    engine.start_run()
    with caplog.at_level(logging.WARNING):
        engine.end_run()

    assert [files for _m, files, _s in hub.uploads] == [["model.pt", PROVENANCE_FILE, SUMMARY_FILE]]
    assert any("a file named model.pt is there" in r.getMessage() for r in caplog.records)
    assert (engine.run_dir / "b" / "model.pt").exists()  # not uploaded, so not removed

    caplog.clear()
    empty_hub = UploadingHub()
    empty, _ = server_job(tmp_path / "empty", ResultsUploader(), hub=empty_hub)
    empty.start_run()
    with caplog.at_level(logging.WARNING):
        empty.end_run()
    assert [files for _m, files, _s in empty_hub.uploads] == [[PROVENANCE_FILE, SUMMARY_FILE]]
    assert any("the results hold no model" in r.getMessage() for r in caplog.records)


def test_files_in_a_separate_result_root_are_gathered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVFL_RESULT_ROOT", str(tmp_path / "result_root"))
    hub = UploadingHub()
    engine, _ = server_job(tmp_path, ResultsUploader(), hub=hub)
    result_root = Path(engine.workspace.get_result_root(engine.job_id))
    (result_root / "models").mkdir(parents=True)
    (result_root / "models" / "final.pt").write_text("w")

    engine.start_run()
    engine.end_run()

    assert [files for _m, files, _s in hub.uploads] == [["final.pt", PROVENANCE_FILE, SUMMARY_FILE]]
    assert not (result_root / "models" / "final.pt").exists()


def test_a_results_folder_that_cannot_be_made_is_an_upload_failure(tmp_path: Path) -> None:
    hub = UploadingHub()
    engine, _ = server_job(tmp_path, ResultsUploader(), StatusReporter(), hub=hub)
    engine.run_dir.mkdir(parents=True)
    (engine.run_dir / "flip_results").write_text("a file in the way")

    engine.start_run()
    engine.end_run()

    assert hub.uploads == []
    assert len(engine.fired(FlipEvents.RESULTS_UPLOAD_FAILED)) == 1
    assert statuses(hub) == ["INITIATED", "RESULTS_UPLOAD_FAILED"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"include": ["/etc/*"]}, "include must list paths or glob patterns relative to the job's run folder"),
        ({"include": ["../*.pt"]}, "no absolute paths, no '..'"),
        ({"remove_after_upload": [""]}, "remove_after_upload must list paths"),
        ({"results_dir": "a/b"}, "results_dir must be a plain file or folder name"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ResultsUploader(**kwargs)


def test_without_a_backend_the_uploader_does_nothing(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, listeners=[ResultsUploader()])
    make_run_folder(engine.run_dir)

    engine.start_run()
    engine.end_run()

    assert (engine.run_dir / "app_server" / "FL_global_model.pt").exists()
    assert not (engine.run_dir / "flip_results" / SUMMARY_FILE).exists()


class ProgressingHub(UploadingHub):
    """A backend whose upload takes the optional ``progress`` callback, as the prod backend's does."""

    def upload_results_to_s3(self, results_folder: str | Path, model_id: str, *, progress: Any = None) -> str:
        assert progress is not None
        for done in (0, 1024, 2048):
            progress(done, 2048)
        return super().upload_results_to_s3(results_folder, model_id)


def test_upload_progress_is_logged_as_bytes_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, _ = server_job(tmp_path, ResultsUploader(), hub=ProgressingHub())
    make_run_folder(engine.run_dir)
    engine.start_run()
    with caplog.at_level(logging.INFO):
        engine.end_run()
    lines = [r.getMessage() for r in caplog.records if "Results upload:" in r.getMessage()]
    assert len(lines) == 1 and "Results upload: 100% (2.0 KiB/2.0 KiB)" in lines[0]
    assert not any(word in lines[0] for word in ("FL_global_model", "flip_results", str(tmp_path)))
