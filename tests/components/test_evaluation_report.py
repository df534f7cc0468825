import json
import math
from pathlib import Path

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply
from nvflare.app_common.abstract.model_locator import ModelLocator
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.evaluation_report import FAILURES_JSON, EvaluationReporter, _metrics, model_name
from flip_nvflare.errors import FlipConfigError
from tests.engine import FakeEngine, hub_calls, server_job


def test_model_names_lose_the_workflow_prefix() -> None:
    assert model_name("SRV_trained") == "trained"
    assert model_name("site-1") == "site-1"


def test_finite_scalar_metrics_are_kept() -> None:
    result = DXO(
        DataKind.METRICS, {"accuracy": 0.9, "n": 5, "nan": math.nan, "inf": math.inf, "curve": [1, 2], "flag": True}
    )
    metrics, reason = _metrics(result.to_shareable())
    assert metrics == {"accuracy": 0.9, "n": 5.0} and reason == ""


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (None, "no result"),
        (make_reply(ReturnCode.EXECUTION_EXCEPTION), "EXECUTION_EXCEPTION"),
        (make_reply(ReturnCode.OK), "the result is not a DXO"),
        (DXO(DataKind.WEIGHTS, {"w": 1.0}).to_shareable(), "the result is WEIGHTS, not METRICS"),
    ],
)
def test_failed_results_say_why(result: object, reason: str) -> None:
    assert _metrics(result) == (None, reason)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(FlipConfigError, match="metric_round"):
        EvaluationReporter(metric_round=-1)
    with pytest.raises(FlipConfigError, match="failures_file"):
        EvaluationReporter(failures_file="../x.json")


class Locator(ModelLocator):
    def __init__(self, names: list[str], broken: bool = False) -> None:
        super().__init__()
        self.names, self.broken = names, broken

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        if self.broken:
            raise FlipConfigError("no checkpoint")
        return list(self.names)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        raise NotImplementedError


def result(engine: FakeEngine, site: str, owner: str, value: object) -> None:
    engine.fire(
        AppEventType.VALIDATION_RESULT_RECEIVED,
        **{AppConstants.DATA_CLIENT: site, AppConstants.MODEL_OWNER: owner, AppConstants.VALIDATION_RESULT: value},
    )


def failures(engine: FakeEngine) -> list[dict[str, str]]:
    return json.loads((engine.run_dir / "flip_results" / FAILURES_JSON).read_text())


def test_metrics_go_to_the_hub_and_failures_to_the_file(tmp_path: Path) -> None:
    reporter = EvaluationReporter(metric_round=2)
    engine, hub = server_job(tmp_path, reporter)
    engine.components["model_locator"] = Locator(["SRV_model", "SRV_other"])

    engine.start_run()
    assert failures(engine) == []  # written at once, so it is in the results however the run ends
    result(engine, "site-1", "SRV_model", DXO(DataKind.METRICS, {"auc": 0.75, "nan": math.nan}).to_shareable())
    result(engine, "site-2", "SRV_model", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    assert failures(engine) == [{"site": "site-2", "model": "model", "reason": "EXECUTION_EXCEPTION"}]
    engine.end_run()

    metrics = [(*call[1:5], call[5]["trust_name"]) for call in hub_calls(hub, "metric")]
    assert metrics == [("model/auc", 0.75, "site-1", 2, "Trust_1")]
    silent = "no result: the site did not answer before the evaluation ended"
    assert failures(engine) == [
        {"site": "site-1", "model": "other", "reason": silent},
        {"site": "site-2", "model": "model", "reason": "EXECUTION_EXCEPTION"},
        {"site": "site-2", "model": "other", "reason": silent},
    ]
    assert reporter.failures == [
        {"site": "site-2", "model": "model", "reason": "EXECUTION_EXCEPTION"},
        {"site": "site-1", "model": "other", "reason": silent},
        {"site": "site-2", "model": "other", "reason": silent},
    ]


@pytest.mark.parametrize("locator", [Locator(["SRV_model"], broken=True), "not a locator", None])
def test_without_a_usable_locator_no_silent_pairs_are_added(tmp_path: Path, locator: object) -> None:
    engine, hub = server_job(tmp_path, EvaluationReporter(results_dir="out", failures_file="failed.json"))
    if locator is not None:
        engine.components["model_locator"] = locator

    engine.start_run()
    result(engine, "", "", None)
    engine.end_run()

    written = json.loads((engine.run_dir / "out" / "failed.json").read_text())
    assert written == [{"site": "unknown", "model": "unknown", "reason": "no result"}]
    assert hub_calls(hub) == []


def test_a_new_run_starts_with_no_failures(tmp_path: Path) -> None:
    reporter = EvaluationReporter()
    first, _ = server_job(tmp_path / "first", reporter)
    first.start_run()
    result(first, "site-1", "SRV_model", None)
    first.fire(EventType.END_RUN)
    second, _ = server_job(tmp_path / "second", reporter)
    second.start_run()
    second.fire(EventType.END_RUN)

    assert reporter.failures == []
    assert failures(second) == []
    assert len(failures(first)) == 1
