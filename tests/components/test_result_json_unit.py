"""ValidationJsonGenerator and EvaluationJsonGenerator on a mock engine: results in, a JSON file out."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.result_json import (
    EVALUATION_JSON,
    VALIDATION_JSON,
    EvaluationJsonGenerator,
    ValidationJsonGenerator,
)
from flip_nvflare.errors import FlipConfigError
from tests.engine import FakeEngine, with_peer


def metrics(**values: Any) -> Shareable:
    return DXO(DataKind.METRICS, dict(values)).to_shareable()


def validation(engine: FakeEngine, client: str, owner: str, result: object) -> None:
    engine.fire(
        AppEventType.VALIDATION_RESULT_RECEIVED,
        **{AppConstants.DATA_CLIENT: client, AppConstants.MODEL_OWNER: owner, AppConstants.VALIDATION_RESULT: result},
    )


def evaluation(engine: FakeEngine, client: str | None, result: object, task: str = "evaluate") -> None:
    ctx = engine.new_context()
    if client is not None:
        with_peer(ctx, client)
    engine.fire(
        EventType.BEFORE_PROCESS_SUBMISSION, ctx, **{FLContextKey.TASK_NAME: task, FLContextKey.TASK_RESULT: result}
    )


def read(engine: FakeEngine, name: str, results_dir: str = "flip_results") -> Any:
    return json.loads((engine.run_dir / results_dir / name).read_text())


def test_validation_results_are_written_after_each_one(tmp_path: Path) -> None:
    generator = ValidationJsonGenerator()
    engine = FakeEngine(tmp_path, listeners=[generator])
    engine.start_run()
    assert not (engine.run_dir / "flip_results" / VALIDATION_JSON).exists()  # nothing until the first result

    validation(engine, "site-1", "SRV_server", metrics(accuracy=np.float32(0.5), dice=np.array([0.25, 0.75])))
    assert read(engine, VALIDATION_JSON) == {"site-1": {"SRV_server": {"accuracy": 0.5, "dice": [0.25, 0.75]}}}

    validation(engine, "site-1", "site-2", metrics(accuracy=math.nan))
    validation(engine, "site-2", "SRV_server", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    validation(engine, "site-2", "site-1", None)
    validation(engine, "site-3", "SRV_server", Shareable())
    validation(engine, "site-3", "site-1", DXO(DataKind.WEIGHTS, {"w": np.zeros(2)}).to_shareable())
    validation(engine, None, None, None)  # type: ignore[arg-type]

    written = read(engine, VALIDATION_JSON)
    # the data kind is written as str() of the enum on Python 3.11 ("DataKind.WEIGHTS"): only check the name
    wrong_kind = written["site-3"].pop("site-1")["error"]
    assert wrong_kind.startswith("unexpected data kind ") and wrong_kind.endswith("WEIGHTS")
    assert written == {
        "site-1": {"SRV_server": {"accuracy": 0.5, "dice": [0.25, 0.75]}, "site-2": {"accuracy": "nan"}},
        "site-2": {"SRV_server": {"error": "EXECUTION_EXCEPTION"}, "site-1": {"error": "no result"}},
        "site-3": {"SRV_server": {"error": "not a DXO"}},
        "unknown": {"unknown": {"error": "no result"}},
    }


def test_a_new_run_starts_a_new_file(tmp_path: Path) -> None:
    generator = ValidationJsonGenerator(results_dir="out", json_file_name="xsite.json")
    first = FakeEngine(tmp_path / "first", listeners=[generator])
    first.start_run()
    validation(first, "site-1", "SRV_server", metrics(accuracy=1.0))
    second = FakeEngine(tmp_path / "second", listeners=[generator])
    second.start_run()
    validation(second, "site-2", "SRV_server", metrics(accuracy=0.0))

    assert read(first, "xsite.json", "out") == {"site-1": {"SRV_server": {"accuracy": 1.0}}}
    assert read(second, "xsite.json", "out") == {"site-2": {"SRV_server": {"accuracy": 0.0}}}


def test_evaluation_task_results_are_recorded_per_model(tmp_path: Path) -> None:
    generator = EvaluationJsonGenerator(model_name="model")
    engine = FakeEngine(tmp_path, listeners=[generator])
    engine.start_run()
    owned = metrics(auc=0.75)
    owned.add_cookie(AppConstants.MODEL_OWNER, "best_model")
    evaluation(engine, "site-1", owned)
    evaluation(engine, "site-1", metrics(auc=0.5))  # says no model: the configured name
    collection = DXO(DataKind.COLLECTION, {"a": DXO(DataKind.METRICS, {"auc": 0.25}), "b": "not a DXO"})
    evaluation(engine, "site-2", collection.to_shareable())
    evaluation(engine, "site-3", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    evaluation(engine, "site-3", Shareable())  # OK but not a DXO
    evaluation(engine, None, metrics(auc=1.0))  # no sender: ignored
    evaluation(engine, "site-4", metrics(auc=1.0), task="train")  # not an evaluation task
    validation(engine, "site-5", "SRV_model", metrics(auc=0.125))  # evaluation workflows' results too

    assert read(engine, EVALUATION_JSON) == {
        "site-1": {"best_model": {"auc": 0.75}, "model": {"auc": 0.5}},
        "site-2": {"a": {"auc": 0.25}, "b": {"error": "no result"}},
        "site-3": {"model": {"error": "not a DXO"}},
        "site-5": {"SRV_model": {"auc": 0.125}},
    }


def test_evaluation_tasks_can_be_named(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, listeners=[EvaluationJsonGenerator(task_names=["validate"])])
    engine.start_run()
    evaluation(engine, "site-1", metrics(loss=2.0), task="validate")
    evaluation(engine, "site-1", metrics(loss=3.0), task="evaluate")

    assert read(engine, EVALUATION_JSON) == {"site-1": {"global_model": {"loss": 2.0}}}


def test_a_file_that_cannot_be_written_never_breaks_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    generator = ValidationJsonGenerator()
    engine = FakeEngine(tmp_path, listeners=[generator])
    engine.start_run()
    engine.run_dir.mkdir(parents=True)
    (engine.run_dir / "flip_results").write_text("a file where the folder should be")

    with caplog.at_level(logging.ERROR):
        validation(engine, "site-1", "SRV_server", metrics(accuracy=1.0))

    assert any(
        f"ValidationJsonGenerator failed on {AppEventType.VALIDATION_RESULT_RECEIVED}" in r.getMessage()
        for r in caplog.records
    )
    assert (engine.run_dir / "flip_results").is_file()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ValidationJsonGenerator(results_dir="a/b"), "results_dir must be a plain file or folder name"),
        (lambda: ValidationJsonGenerator(json_file_name=".."), "json_file_name must be a plain"),
        (lambda: EvaluationJsonGenerator(task_names=["evaluate", ""]), "task_names must be a list of task names"),
        (lambda: EvaluationJsonGenerator(model_name=""), "model_name must be a non-empty string"),
    ],
)
def test_bad_arguments(build: Any, message: str) -> None:
    with pytest.raises(FlipConfigError, match=message):
        build()


def test_an_unexpected_data_kind_is_named_by_its_value(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, listeners=[ValidationJsonGenerator()])
    engine.start_run()
    validation(engine, "site-1", "SRV_server", DXO(DataKind.WEIGHTS, {"w": np.zeros(2)}).to_shareable())

    assert read(engine, VALIDATION_JSON) == {"site-1": {"SRV_server": {"error": "unexpected data kind WEIGHTS"}}}
