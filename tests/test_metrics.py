"""send_metrics_value refuses bad arguments in the client code that passed them (before any event)."""

from __future__ import annotations

import math

import pytest

from flip_nvflare.metrics import send_metrics_value


class NoEngine:
    """An FLContext stand-in outside a running job."""

    def get_engine(self) -> None:
        return None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"label": ""}, ValueError, "label must be a non-empty string"),
        ({"label": 3}, ValueError, "label must be a non-empty string"),
        ({"value": "high"}, TypeError, "value must be a number, got str"),
        ({"value": None}, TypeError, "value must be a number, got NoneType"),
        ({"round": -1}, ValueError, "round must be an integer >= 0"),
        ({"round": 1.5}, ValueError, "round must be an integer >= 0"),
        ({"x_value": math.inf, "x_label": "epoch"}, ValueError, "x_value must be a finite number"),
        ({"x_value": "one"}, TypeError, "x_value must be a number"),
        ({"x_value": 1, "x_label": ""}, ValueError, "x_label must be a string of 1 to 64 characters"),
        ({"x_value": 1, "x_label": "e" * 65}, ValueError, "x_label must be a string of 1 to 64 characters"),
        ({}, ValueError, "fl_ctx has no engine"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    args: dict[str, object] = {"label": "LOSS_FUNCTION", "value": 0.5, "fl_ctx": NoEngine(), **kwargs}
    with pytest.raises(error, match=message):
        send_metrics_value(**args)  # type: ignore[arg-type]


def test_non_finite_values_are_not_refused_on_the_client() -> None:
    # NaN passes the client checks (the server drops and counts it); here it stops at the missing engine
    with pytest.raises(ValueError, match="fl_ctx has no engine"):
        send_metrics_value("LOSS_FUNCTION", math.nan, NoEngine())  # type: ignore[arg-type,unused-ignore]


def test_flip_apps_may_pass_their_backend() -> None:
    # FLIP apps call send_metrics_value(..., flip=self.flip): accepted (no TypeError), reaches the engine check
    with pytest.raises(ValueError, match="fl_ctx has no engine"):
        send_metrics_value("LOSS_FUNCTION", 0.5, NoEngine(), 1, flip=object())  # type: ignore[arg-type,unused-ignore]
