"""EvaluateModels reads every shape of evaluation reply FLIP apps return, one reply per model."""

from __future__ import annotations

import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable, make_reply

from flip_nvflare.constants import FlipHeaders
from flip_nvflare.controllers import EvaluateModels
from flip_nvflare.controllers.evaluate import split_result
from flip_nvflare.errors import FlipConfigError

MODELS = ["alpha", "beta"]


def _view(split: dict[str, Shareable]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, reply in split.items():
        code = reply.get_return_code(ReturnCode.OK)
        out[name] = from_shareable(reply).data if code == ReturnCode.OK else code
    return out


def test_flip_evaluators_metrics_keyed_by_model_name() -> None:
    reply = DXO(DataKind.METRICS, data={"alpha": {"spleen": {"dice": 0.9}}, "beta": {"dice": 0.5}}).to_shareable()
    assert _view(split_result(reply, MODELS)) == {"alpha": {"spleen": {"dice": 0.9}}, "beta": {"dice": 0.5}}


def test_a_collection_with_per_model_failures() -> None:
    reply = DXO(DataKind.COLLECTION, data={"alpha": DXO(DataKind.METRICS, data={"acc": 1.0})}).to_shareable()
    reply.set_header(FlipHeaders.MODEL_FAILURES, {"beta": ReturnCode.EXECUTION_EXCEPTION})
    assert _view(split_result(reply, MODELS)) == {"alpha": {"acc": 1.0}, "beta": ReturnCode.EXECUTION_EXCEPTION}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (make_reply(ReturnCode.EXECUTION_EXCEPTION), ReturnCode.EXECUTION_EXCEPTION),
        (None, ReturnCode.EXECUTION_EXCEPTION),
        (DXO(DataKind.METRICS, data={"acc": 1.0}).to_shareable(), ReturnCode.EXECUTION_RESULT_ERROR),
        (DXO(DataKind.WEIGHTS, data={"w": 1.0}).to_shareable(), ReturnCode.EXECUTION_RESULT_ERROR),
    ],
)
def test_failures_and_unreadable_replies_fail_every_model(reply: Shareable | None, expected: str) -> None:
    assert _view(split_result(reply, MODELS)) == {"alpha": expected, "beta": expected}


def test_with_one_model_plain_metrics_are_that_models() -> None:
    reply = DXO(DataKind.METRICS, data={"acc": 1.0}).to_shareable()
    assert _view(split_result(reply, ["only"])) == {"only": {"acc": 1.0}}


def test_arguments_are_checked() -> None:
    with pytest.raises(FlipConfigError):
        EvaluateModels(task_timeout=-1)
    with pytest.raises(FlipConfigError):
        EvaluateModels(participating_clients="site-1")  # type: ignore[arg-type]
