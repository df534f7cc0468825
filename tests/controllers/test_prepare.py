"""Argument checks of the controllers (raised when NVFlare builds the config, i.e. at job start)."""

from __future__ import annotations

import pytest

from flip_nvflare.constants import FlipTasks
from flip_nvflare.controllers import CleanupClients, InitEvaluation, InitTraining
from flip_nvflare.errors import FlipConfigError


def test_defaults_follow_the_flip_task_names() -> None:
    assert InitTraining()._task_name == FlipTasks.INIT_TRAINING
    assert InitEvaluation()._task_name == FlipTasks.INIT_TASK
    assert CleanupClients()._task_name == FlipTasks.POST_VALIDATION


def test_unset_min_clients_means_all() -> None:
    assert InitTraining(min_clients=None)._min_clients == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_clients": -1}, "min_clients must be an integer >= 0"),
        ({"min_clients": "2"}, "min_clients must be an integer >= 0"),
        ({"participating_clients": "site-1"}, "participating_clients must be a list"),
        ({"participating_clients": ["site-1"], "min_clients": 2}, r"min_clients \(2\) is more than"),
        ({"task_timeout": -5}, "task_timeout"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message):
        InitTraining(**kwargs)  # type: ignore[arg-type]
