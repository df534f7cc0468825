"""Fixtures of the server-widget tests: the simulator runs of the selected e2e modules, started together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.components.simjobs import PLANS, PlanContext, RunPool

#: Simulator runs at once: a run mostly waits (task polling, sleeps), so a few share 2 cores well.
MAX_PARALLEL_RUNS = 3


@pytest.fixture(scope="session")
def widget_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunPool]:
    """Every run planned by a selected test module, started (longest first) when first needed."""
    selected = {module.__name__ for item in request.session.items if (module := getattr(item, "module", None))}
    wanted = sorted(
        ((name, seconds, factory) for name, (module, seconds, factory) in PLANS.items() if module in selected),
        key=lambda plan: -plan[1],
    )
    with ExitStack() as stack:
        context = PlanContext(tmp_path_factory, stack)
        pool = RunPool(MAX_PARALLEL_RUNS)
        stack.callback(pool.close)
        pool.start([(name, factory(context)) for name, _seconds, factory in wanted])
        yield pool
