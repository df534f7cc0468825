import math

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply

from flip_nvflare.components.evaluation_report import EvaluationReporter, _metrics, model_name
from flip_nvflare.errors import FlipConfigError


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
