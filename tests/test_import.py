"""Importing flip_nvflare must read no settings, open no connection and stay light."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_reads_no_environment_and_opens_no_connection() -> None:
    probe = textwrap.dedent(
        """
        import os, socket, sys
        reads = []
        class Env(type(os.environ)):
            def __getitem__(self, key):
                reads.append(key)
                return super().__getitem__(key)
            def get(self, key, default=None):
                reads.append(key)
                return super().get(key, default)
        os.environ.__class__ = Env
        def refuse(*args, **kwargs):
            raise AssertionError("connection opened at import time")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import flip_nvflare
        from flip_nvflare import FLIPBase, FLIPStandardDev, FLIPStandardProd, ModelStatus, ResourceType, JobType
        FLIPStandardProd(); FLIPStandardDev()
        flip_vars = [k for k in reads if k.startswith(("FLIP", "INTERNAL", "TRUST", "DATA_", "IMAGING", "NET_ID",
                                                         "IMAGES", "UPLOADED", "DEV_", "AWS"))]
        assert not flip_vars, flip_vars
        heavy = [m for m in ("torch", "nvflare", "boto3") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_public_api_names() -> None:
    import flip_nvflare
    from flip_nvflare.constants import JobType, ModelStatus, ResourceType
    from flip_nvflare.core.base import FLIPBase
    from flip_nvflare.core.dev import FLIPStandardDev
    from flip_nvflare.core.prod import FLIPStandardProd

    assert flip_nvflare.FLIPBase is FLIPBase
    assert flip_nvflare.FLIPStandardProd is FLIPStandardProd
    assert flip_nvflare.FLIPStandardDev is FLIPStandardDev
    assert flip_nvflare.ModelStatus is ModelStatus and flip_nvflare.ResourceType is ResourceType
    assert flip_nvflare.JobType is JobType
    assert [s.value for s in ResourceType] == ["DICOM", "NIFTI", "SEG", "ALL"]
    assert [j.value for j in JobType] == ["standard", "evaluation", "fed_opt"]
    assert {s.value for s in ModelStatus} == {
        "PENDING",
        "INITIATED",
        "PREPARED",
        "TRAINING_STARTED",
        "RESULTS_UPLOADED",
        "RESULTS_UPLOAD_FAILED",
        "ERROR",
        "STOPPED",
    }
