from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from flip_nvflare import client
from flip_nvflare.client import FLIP, get_model_weights_diff, prepared_cohort, using_backend, using_run_dir
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.manifest import PreparedCohortError


def test_flip_outside_a_job_explains_how_to_get_a_backend() -> None:
    with pytest.raises(FlipConfigError, match="FLIPStandardDev") as info:
        FLIP()
    assert "self.flip = FLIP()" in str(info.value)


def test_using_backend_is_per_thread_and_nests() -> None:
    first, second = FLIPStandardDev(env={}), FLIPStandardDev(env={})
    seen: list[object] = []
    with using_backend(first):
        assert FLIP() is first
        with using_backend(second):
            assert FLIP() is second
        assert FLIP() is first

        def other_thread() -> None:
            try:
                seen.append(FLIP())
            except FlipConfigError as exc:
                seen.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert isinstance(seen[0], FlipConfigError)


def test_no_backend_outlives_the_calls_that_made_it_current() -> None:
    """No process-wide registry: once the runner's call ends, FLIP() has no backend to return."""
    backend = FLIPStandardDev(env={})
    with using_backend(backend):
        assert FLIP() is backend
    assert not hasattr(client, "_job_backends")
    with pytest.raises(FlipConfigError, match="called outside a job"):
        FLIP()


def test_prepared_cohort_needs_a_job_context(tmp_path: Path) -> None:
    with pytest.raises(FlipConfigError, match="fl_ctx"):
        prepared_cohort()
    with using_run_dir(tmp_path), pytest.raises(PreparedCohortError, match="CohortPreparer"):
        prepared_cohort()


def test_weights_diff_from_numpy_and_torch() -> None:
    torch = pytest.importorskip("torch")
    from nvflare.apis.dxo import DataKind, MetaKey

    original = {"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    new = {"w": torch.full((2, 3), 3.0, requires_grad=True), "b": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    dxo = get_model_weights_diff(original, new, iterations=7)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 7
    np.testing.assert_array_equal(dxo.data["w"], np.full((2, 3), 2.0, dtype=np.float32))
    np.testing.assert_array_equal(dxo.data["b"], np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert dxo.data["w"].dtype == np.float32


def test_weights_diff_errors_name_the_weight() -> None:
    with pytest.raises(KeyError, match="'extra'"):
        get_model_weights_diff({"w": np.zeros(1)}, {"w": np.zeros(1), "extra": np.zeros(1)}, 1)
    with pytest.raises(ValueError, match=r"'w' changed shape from \(1,\) to \(2,\)"):
        get_model_weights_diff({"w": np.zeros(1)}, {"w": np.zeros(2)}, 1)
    with pytest.raises(ValueError, match="iterations"):
        get_model_weights_diff({"w": np.zeros(1)}, {"w": np.zeros(1)}, -1)


def test_flip_app_imports_work_from_the_package_and_stay_light() -> None:
    probe = (
        "import sys\n"
        "from flip_nvflare import FLIP, send_metrics_value, get_model_weights_diff, prepared_cohort, PTConstants\n"
        "from flip_nvflare import ResourceType, ModelStatus\n"
        "heavy = [m for m in ('torch', 'nvflare', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_flip_app_module_paths_are_mirrored() -> None:
    """A FLIP app's imports work with ``flip`` replaced by ``flip_nvflare`` and nothing else."""
    probe = (
        "from flip_nvflare import FLIP\n"
        "from flip_nvflare.constants import PTConstants, ResourceType, ModelStatus\n"
        "from flip_nvflare.nvflare.metrics import send_metrics_value\n"
        "from flip_nvflare.utils import get_model_weights_diff\n"
        "assert PTConstants.PTFileModelName == 'FL_global_model.pt'\n"
        "assert PTConstants.PTServerName == 'server'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
