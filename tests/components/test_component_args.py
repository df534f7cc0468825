"""Server widgets refuse bad job-config arguments when the job is built; small helpers they share."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flip_nvflare.components import (
    EvaluationJsonGenerator,
    ExceptionForwarder,
    MetricsForwarder,
    ResultsUploader,
    StatusReporter,
    ValidationJsonGenerator,
)
from flip_nvflare.components.metrics import split_x_axis
from flip_nvflare.components.progress import payload_size
from flip_nvflare.components.result_json import to_jsonable, write_json_atomically
from flip_nvflare.components.status import DEFAULT_STATUS_EVENTS, _status_events
from flip_nvflare.constants import FlipEvents, ModelStatus
from flip_nvflare.errors import FlipConfigError, FlipError


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StatusReporter(flip_id=""), "flip_id must be the id of the FlipBackend"),
        (lambda: StatusReporter(status_events={"RUNNING": ["x"]}), "not one of INITIATED, PREPARED"),
        (lambda: StatusReporter(status_events={"PREPARED": "x"}), "must be a list of event names"),
        (lambda: StatusReporter(completed_status="PREPARED"), "must be a final status"),
        (lambda: StatusReporter(completed_status="DONE"), "Unknown model status"),
        (lambda: MetricsForwarder(analytics_events=[""]), "analytics_events must be a list"),
        (lambda: ExceptionForwarder(ignore_return_codes=[1]), "ignore_return_codes must be a list"),  # type: ignore[list-item]
        (lambda: ResultsUploader(results_dir="a/b"), "results_dir must be a plain file or folder name"),
        (lambda: ResultsUploader(include=["/etc/*"]), "relative to the job's run folder"),
        (lambda: ResultsUploader(remove_after_upload=["../x"]), "no absolute paths, no '..'"),
        (lambda: ValidationJsonGenerator(json_file_name="../x.json"), "json_file_name must be a plain"),
        (lambda: EvaluationJsonGenerator(task_names=[""]), "task_names must be a list"),
        (lambda: EvaluationJsonGenerator(model_name=""), "model_name must be a non-empty string"),
    ],
)
def test_bad_arguments_fail_when_the_job_is_built(build: object, message: str) -> None:
    with pytest.raises(FlipError, match=message):
        build()  # type: ignore[operator]


def test_status_events_can_be_overridden() -> None:
    table = _status_events({"PREPARED": [FlipEvents.PREPARATION_DONE]})
    assert table[FlipEvents.PREPARATION_DONE] is ModelStatus.PREPARED
    assert "_initial_model_loaded" not in table  # replaced, not added to
    assert _status_events(None) == _status_events({}) and len(DEFAULT_STATUS_EVENTS) == 3
    with pytest.raises(FlipConfigError):
        _status_events({"ERROR": ["x"]})


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train_loss@epoch", ("train_loss", "epoch")),
        ("a@b@step", ("a@b", "step")),
        ("plain", ("plain", None)),
        ("@epoch", ("@epoch", None)),
        ("loss@", ("loss@", None)),
    ],
)
def test_x_axis_in_a_metric_name(name: str, split: tuple[str, str | None]) -> None:
    assert split_x_axis(name) == split


def test_results_json_is_plain_json(tmp_path: Path) -> None:
    data = {"site-1": {"m": {"acc": np.float32(0.5), "n": np.int64(3), "v": np.arange(2), "bad": math.nan}}}
    converted = to_jsonable(data)
    assert converted == {"site-1": {"m": {"acc": 0.5, "n": 3, "v": [0, 1], "bad": "nan"}}}
    path = tmp_path / "folder" / "results.json"
    write_json_atomically(path, converted)
    assert json.loads(path.read_text()) == converted
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_payload_size_counts_arrays_without_serialising() -> None:
    import torch

    payload = {"w": np.zeros((10, 10), dtype=np.float32), "nested": [torch.zeros(5, dtype=torch.float64), b"abc"]}
    assert payload_size(payload) == 400 + 40 + 3
    assert payload_size({"meta": "text", "n": 3}) == 0
