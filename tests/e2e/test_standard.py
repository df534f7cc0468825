"""flip_standard end to end in prod mode (emulator + moto S3); dev mode is the demo (test_demo)."""

from __future__ import annotations

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare_demo.report import KEY_METRIC
from tests.e2e.conftest import ProdRun
from tests.e2e.jobtools import load_config

pytestmark = pytest.mark.e2e

LIFECYCLE = ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_prod_run_hub_record(standard_prod: ProdRun) -> None:
    records = standard_prod.records
    assert records.status_names() == LIFECYCLE
    trusts = sorted({m.trust for m in records.metrics})
    assert trusts == ["Trust_1", "Trust_2"]
    seen = {(m.trust, m.global_round, m.label) for m in records.metrics}
    for trust in trusts:
        for round_ in (0, 1):
            for label in (KEY_METRIC, "train_loss", "local_val_accuracy"):
                assert (trust, round_, label) in seen
    assert not [log for log in records.logs if not log.success], "no client reported an error"


def test_prod_run_results_object_in_s3(standard_prod: ProdRun) -> None:
    (key,) = standard_prod.keys
    model_id = standard_prod.model.model_id
    assert key.startswith(f"{model_id}/") and key.endswith(".zip") and not key.startswith("/")
    names = set(standard_prod.results_zip.names)
    assert {"FL_global_model.pt", "best_FL_global_model.pt", "cross_val_results.json", "run_summary.json"} <= names
    assert set(standard_prod.results_zip.json("cross_val_results.json")) == {"site-1", "site-2"}
    summary = standard_prod.results_zip.json("run_summary.json")
    assert model_id in str(summary)


def test_prod_run_used_the_rewritten_keys(standard_prod: ProdRun) -> None:
    server = load_config(standard_prod.job, "server")
    client = load_config(standard_prod.job, "client")
    assert server["flip_mode"] == client["flip_mode"] == "prod"
    assert server["participating_clients"] == ["site-1", "site-2"]
    assert client["project_id"] == standard_prod.model.encrypted_project_id
    assert max(m.global_round for m in standard_prod.records.metrics) == server["global_rounds"] - 1


def test_prod_run_leaks_no_key(standard_prod: ProdRun, emulator: EmulatorHandle) -> None:
    """Neither service key is in the results zip, the hub's records, or any file the run left (logs, manifests)."""
    env = emulator.env()
    keys = [env["INTERNAL_SERVICE_KEY"].encode(), env["TRUST_INTERNAL_SERVICE_KEY"].encode()]
    assert all(len(k) >= 24 for k in keys)
    zipped = list(standard_prod.results_zip.files.values())
    assert zipped
    hub_text = repr(standard_prod.records).encode()
    files = [p for p in standard_prod.result.workspace.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "log.txt" for p in files)
    assert any("flip_cohort" in p.parts for p in files)  # the prepared cohort's record stays after cleanup
    for key in keys:
        assert all(key not in blob for blob in zipped)
        assert key not in hub_text
        leaking = [str(p) for p in files if key in p.read_bytes()]
        assert leaking == []
