"""FlipConstants answers from the running job's backend, never from the environment; FLIP names we do not
provide fail with a message saying what to use instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flip_nvflare.client import using_backend
from flip_nvflare.compat import FLIP_UNSUPPORTED
from flip_nvflare.constants import FlipConstants, ResourceType
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import FlipConfigError, FlipUnsupportedImport, FlipUnsupportedName


def test_local_dev_comes_from_the_backend_not_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_DEV", "true")  # FLIP's switch: ignored
    dev = FLIPStandardDev(dataframe_csv=tmp_path / "cohort.csv", images_dir=tmp_path / "images", env={})
    with using_backend(dev):
        assert FlipConstants.LOCAL_DEV is True
        assert FlipConstants.DEV_DATAFRAME == str(tmp_path / "cohort.csv")
        assert FlipConstants.DEV_IMAGES_DIR == str(tmp_path / "images")
    with using_backend(FLIPStandardProd(env={})):
        assert FlipConstants.LOCAL_DEV is False
        with pytest.raises(FlipUnsupportedName, match="only in dev mode"):
            FlipConstants.DEV_DATAFRAME  # noqa: B018


def test_outside_a_job_it_says_where_it_can_be_read() -> None:
    with pytest.raises(FlipConfigError, match="outside a job"):
        FlipConstants.LOCAL_DEV  # noqa: B018
    assert "LOCAL_DEV" in dir(FlipConstants)
    assert not hasattr(FlipConstants, "NO_SUCH_SETTING")
    with pytest.raises(TypeError, match="read as a class"):
        FlipConstants()


@pytest.mark.parametrize("name", ["INTERNAL_SERVICE_KEY", "TRUST_INTERNAL_SERVICE_KEY", "IMAGES_DIR", "MIN_CLIENTS"])
def test_settings_app_code_does_not_get_say_what_to_use(name: str) -> None:
    with pytest.raises(FlipUnsupportedName, match=f"FlipConstants.{name} is not available in flip-nvflare: .+"):
        getattr(FlipConstants, name)


@pytest.mark.parametrize("spec", sorted(FLIP_UNSUPPORTED))
def test_each_unsupported_flip_import_fails_with_what_to_use_instead(spec: str) -> None:
    module, _, name = spec.partition(":")
    code = f"from {module} import {name}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "FlipUnsupportedImport" in done.stderr
    assert FLIP_UNSUPPORTED[spec][:40] in done.stderr.replace("\n", " ")
    with pytest.raises(FlipUnsupportedImport, match=r"docs/migrating\.md"):
        exec(code, {})


def test_flip_names_of_constants() -> None:
    assert ResourceType.SEGMENTATION is ResourceType.SEG
