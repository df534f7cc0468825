"""What a runner hands back from the user's app, on a mock client engine (no simulator run)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.apis.signal import Signal
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.client.client_engine_executor_spec import ClientEngineExecutorSpec

from flip_nvflare.backend import FlipBackend
from flip_nvflare.constants import FlipHeaders
from flip_nvflare.executors.runners import EvaluatorRunner, TrainerRunner, ValidatorRunner

JOB_ID = "0c6f3a1e-5b7d-4e2a-9f18-3d4c5b6a7e8f"
RunnerClass = type[TrainerRunner | ValidatorRunner | EvaluatorRunner]

APP = """
import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor


class {class_name}(Executor):
    def __init__(self, rc="OK", exception=None, extra=False, **kwargs):
        super().__init__()
        self.rc, self.exception, self.extra = rc, exception, extra

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        reply = DXO(DataKind.WEIGHTS, data={{"w": np.full(4, 0.25, np.float32)}}).to_shareable()
        reply.set_return_code(self.rc)
        if self.exception is not None:
            reply.set_header("exception", self.exception)
        if self.extra:
            reply["weights_outside_the_dxo"] = {{"w": np.ones(3, np.float32)}}
        return reply
"""

RUNNERS: list[tuple[RunnerClass, str, str]] = [
    (TrainerRunner, "trainer", "FLIP_TRAINER"),
    (ValidatorRunner, "validator", "FLIP_VALIDATOR"),
    (EvaluatorRunner, "evaluator", "FLIP_EVALUATOR"),
]


@pytest.fixture(autouse=True)
def restore_sys_path_and_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):  # forget the apps' modules, loaded from tmp_path
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _client_context(root: Path) -> tuple[FLContext, Workspace]:
    """A context of site-1 in a dev-mode job, on a mock client engine around a real workspace."""
    for folder in ("startup", "local"):
        (root / folder).mkdir(parents=True)
    workspace = Workspace(str(root), site_name="site-1")
    components = {"flip": FlipBackend(mode="dev")}
    engine = MagicMock(spec=ClientEngineExecutorSpec)
    engine.get_component.side_effect = components.get
    engine.get_workspace.return_value = workspace
    manager = FLContextManager(
        engine=engine, identity_name="site-1", job_id=JOB_ID, public_stickers={FLContextKey.SECURE_MODE: False}
    )
    return manager.new_context(), workspace


def _run(tmp_path: Path, runner_cls: RunnerClass, module: str, class_name: str, **app_args: object) -> Shareable:
    fl_ctx, workspace = _client_context(tmp_path / "workspace")
    custom = Path(workspace.get_app_custom_dir(JOB_ID))
    custom.mkdir(parents=True)
    (custom / f"{module}.py").write_text(textwrap.dedent(APP.format(class_name=class_name)))
    runner = runner_cls(app_args=dict(app_args))
    return runner.execute("task", Shareable(), fl_ctx, Signal())


@pytest.mark.parametrize(("runner_cls", "module", "class_name"), RUNNERS)
@pytest.mark.parametrize("rc", [ReturnCode.EXECUTION_EXCEPTION, ReturnCode.TASK_ABORTED, "A_CODE_OF_ITS_OWN"])
def test_a_non_ok_reply_leaves_without_weights(
    tmp_path: Path, runner_cls: RunnerClass, module: str, class_name: str, rc: str
) -> None:
    reply = _run(tmp_path, runner_cls, module, class_name, rc=rc, exception="ValueError: lr too high", extra=True)
    assert reply.get_return_code() == rc
    assert reply.get_header(FlipHeaders.EXCEPTION) == "ValueError: lr too high"  # sanitized, kept
    assert set(reply) == {ReservedHeaderKey.HEADERS}  # no DXO, nothing else besides the headers
    assert reply.get_header(ReservedHeaderKey.CONTENT_TYPE) is None
    with pytest.raises(ValueError):
        from_shareable(reply)


@pytest.mark.parametrize(("runner_cls", "module", "class_name"), RUNNERS)
def test_an_ok_reply_keeps_its_weights(tmp_path: Path, runner_cls: RunnerClass, module: str, class_name: str) -> None:
    reply = _run(tmp_path, runner_cls, module, class_name)
    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHTS
    assert np.array_equal(dxo.data["w"], np.full(4, 0.25, np.float32))
