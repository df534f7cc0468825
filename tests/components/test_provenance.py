"""provenance.json: what the ResultsUploader writes into the results zip, and the pieces it is built from."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.backend import FlipBackend, get_hub_session
from flip_nvflare.components import provenance as prov
from flip_nvflare.components.provenance import PROVENANCE_FILE, verify_results_zip
from flip_nvflare.components.results import SUMMARY_FILE, ResultsUploader
from tests.engine import FakeEngine

MODEL_ID = "6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b"
PERCENTILE = "flip_nvflare.filters.PercentilePrivacy"
AGGREGATOR = "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator"
SERVER_CONFIG: dict[str, Any] = {
    "format_version": 2,
    "model_id": MODEL_ID,
    "global_rounds": 3,
    "min_clients": 2,
    "task_data_filters": [],
    "task_result_filters": [],
    "components": [
        {"id": "flip", "path": "flip_nvflare.backend.FlipBackend", "args": {"mode": "{flip_mode}"}},
        {
            "id": "aggregator",
            "path": AGGREGATOR,
            "args": {"expected_data_kind": "WEIGHT_DIFF", "aggregation_weights": {"site-1": 2.0}},
        },
        {"id": "tracker", "path": "some.Tracker", "args": {"api_key": "sk-very-secret", "uri": "http://x"}},
    ],
    "workflows": [
        {
            "id": "scatter_and_gather",
            "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
            "args": {"min_clients": "{min_clients}", "num_rounds": "{global_rounds}", "aggregator_id": "aggregator"},
        }
    ],
}
CLIENT_CONFIG: dict[str, Any] = {
    "format_version": 2,
    "task_data_filters": [],
    "task_result_filters": [
        {
            "tasks": ["train"],
            "filters": [{"path": PERCENTILE, "args": {"percentile": 10, "gamma": 0.01, "db_password": "hunter2"}}],
        }
    ],
}


class PrivacyLedger(FLComponent):
    """Adds a ``privacy`` section to the run summary, as the DP widget does."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            get_hub_session(fl_ctx).add_summary_section(
                "privacy", lambda: {"mechanism": "gaussian", "epsilon_spent": {"Trust_1": 1.25}, "delta": 1e-5}
            )


def _app(run_dir: Path) -> Path:
    app = run_dir / "app_server"
    (app / "config").mkdir(parents=True)
    (app / "custom" / "pkg").mkdir(parents=True)
    (app / "config" / "config_fed_server.json").write_text(json.dumps(SERVER_CONFIG))
    (app / "config" / "config_fed_client.json").write_text(json.dumps(CLIENT_CONFIG))
    (app / "custom" / "trainer.py").write_text("class FLIP_TRAINER: ...\n")
    (app / "custom" / "pkg" / "util.py").write_text("X = 1\n")
    (app / "custom" / "config.json").write_text(json.dumps({"job_type": "standard", "GLOBAL_ROUNDS": 3}))
    (app / "FL_global_model.pt").write_bytes(b"final weights")
    return app


def _run(tmp_path: Path, *, privacy: bool = True) -> tuple[Path, FakeEngine]:
    flip = FlipBackend(mode="dev", model_id=MODEL_ID, dev_output_dir=str(tmp_path / "dev_out"))
    listeners: list[FLComponent] = [ResultsUploader(), *([PrivacyLedger()] if privacy else [])]
    meta = {"name": "job", "resource_spec": {"site-1": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}}}
    engine = FakeEngine(tmp_path, components={"flip": flip}, listeners=listeners, job_meta=meta)
    _app(engine.run_dir)
    (engine.run_dir / "flip_results").mkdir()
    (engine.run_dir / "flip_results" / "cross_val_results.json").write_text('{"site-1": {}}')
    engine.start_run()
    for client in ("site-1", "site-2"):
        get_hub_session(engine.new_context()).journal.client_seen(client)
    engine.fire(AppEventType.AFTER_AGGREGATION)
    engine.fire(AppEventType.AFTER_AGGREGATION)
    engine.end_run()
    (zip_path,) = sorted((tmp_path / "dev_out" / "results" / MODEL_ID).glob("*.zip"))
    return zip_path, engine


def test_the_uploaded_zip_carries_a_provenance_that_verifies(tmp_path: Path) -> None:
    zip_path, engine = _run(tmp_path)
    with zipfile.ZipFile(zip_path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    data = json.loads(members[PROVENANCE_FILE])

    assert sorted(data["files"]) == sorted(set(members) - {PROVENANCE_FILE})
    assert set(data["files"]) == {"FL_global_model.pt", "cross_val_results.json", SUMMARY_FILE}
    for name, entry in data["files"].items():
        assert entry == {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
    assert json.loads(members[SUMMARY_FILE])["files"] == sorted(members)
    assert (data["model_id"], data["job_id"], data["job_type"]) == (MODEL_ID, engine.job_id, "standard")
    assert (data["rounds_completed"], data["outcome"], data["flip_mode"]) == (2, "completed", "dev")
    assert data["trusts"] == ["Trust_1", "Trust_2"]
    assert data["resource_spec"] == {"site-1": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}}
    assert set(data["versions"]) == {"flip_nvflare", "nvflare", "torch", "python"}
    assert data["versions"]["nvflare"] and data["versions"]["python"].count(".") == 2

    workflow = data["aggregation"]["workflows"][0]
    assert workflow["args"] == {"min_clients": 2, "num_rounds": 3, "aggregator_id": "aggregator"}
    assert [c["id"] for c in data["aggregation"]["components"]] == ["aggregator"]
    (chain,) = data["privacy"]["client_filters"]["task_result_filters"]
    assert chain["tasks"] == ["train"] and chain["filters"][0]["path"] == PERCENTILE
    assert chain["filters"][0]["args"] == {"percentile": 10, "gamma": 0.01, "db_password": prov.REDACTED}
    assert data["privacy"]["run_summary"]["epsilon_spent"] == {"Trust_1": 1.25}
    assert data["privacy"]["server_filters"] == {"task_data_filters": [], "task_result_filters": []}
    text = members[PROVENANCE_FILE].decode()
    assert "hunter2" not in text and "sk-very-secret" not in text

    assert data["app_code"]["files"] == 5
    assert data["app_code"]["sha256"] == prov.app_code_hash(engine.run_dir / "app_server")["sha256"]  # type: ignore[index]
    result = verify_results_zip(zip_path)
    assert result.ok, result
    assert sorted(result.verified) == sorted(data["files"])


def test_without_a_privacy_section_or_a_client_config_the_provenance_says_so(tmp_path: Path) -> None:
    flip = FlipBackend(mode="dev", model_id=MODEL_ID, dev_output_dir=str(tmp_path / "dev_out"))
    engine = FakeEngine(tmp_path, components={"flip": flip}, listeners=[ResultsUploader()])
    engine.start_run()
    engine.end_run()
    (zip_path,) = sorted((tmp_path / "dev_out" / "results" / MODEL_ID).glob("*.zip"))
    result = verify_results_zip(zip_path)
    assert result.ok and result.provenance is not None
    assert result.provenance["privacy"] == {"server_filters": None, "client_filters": None}
    assert result.provenance["aggregation"] is None and result.provenance["app_code"] is None
    assert result.provenance["job_type"] is None and result.provenance["rounds_completed"] == 0


def test_a_provenance_that_cannot_be_made_is_logged_and_the_results_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("disk trouble /secret/path")

    monkeypatch.setattr("flip_nvflare.components.results.build_provenance", broken)
    zip_path, _ = _run(tmp_path, privacy=False)
    with zipfile.ZipFile(zip_path) as zf:
        assert PROVENANCE_FILE not in zf.namelist() and SUMMARY_FILE in zf.namelist()
    logged = [r.getMessage() for r in caplog.records if PROVENANCE_FILE in r.getMessage()]
    assert logged and "RuntimeError" in logged[0] and "/secret/path" not in logged[0]


def test_the_app_code_hash_is_deterministic_and_ignores_generated_files(tmp_path: Path) -> None:
    app = _app(tmp_path / "run")
    first = prov.app_code_hash(app)
    assert first is not None and first["files"] == 5 and first["method"] == prov.APP_CODE_METHOD
    (app / "custom" / "__pycache__").mkdir()
    (app / "custom" / "__pycache__" / "trainer.cpython-311.pyc").write_bytes(b"\0")
    (app / "custom" / "pkg" / "util.pyc").write_bytes(b"\0")
    (app / "custom" / "link.py").symlink_to(app / "custom" / "trainer.py")
    (app / "model.pt").write_bytes(b"not code")  # outside config/ and custom/
    assert prov.app_code_hash(app) == first

    lines = sorted(
        f"{p.relative_to(app).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in [*(app / "config").rglob("*.json"), *(app / "custom").rglob("*.py"), app / "custom" / "config.json"]
        if not p.is_symlink() and "__pycache__" not in p.parts
    )
    assert first["sha256"] == hashlib.sha256("".join(lines).encode()).hexdigest()  # the documented method

    (app / "custom" / "trainer.py").write_text("class FLIP_TRAINER: pass\n")
    assert prov.app_code_hash(app) != first
    assert prov.app_code_hash(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("key", True),
        ("aws_secret_access_key", True),
        ("token", True),
        ("DB_PASSWORD", True),
        ("access_key_id", True),
        ("key_metric", False),
        ("percentile", False),
        ("keep_models", False),
    ],
)
def test_secret_arg_names(name: str, secret: bool) -> None:
    assert prov.is_secret_name(name) is secret


def test_job_type_comes_from_the_app_then_the_workflows() -> None:
    evaluation = {"workflows": [{"path": "flip_nvflare.controllers.EvaluateModels"}]}
    fed_opt = {"components": [{"path": "nvflare.app_opt.pt.fedopt.PTFedOptModelShareableGenerator"}]}
    assert prov.job_type_of(evaluation) == "evaluation"
    assert prov.job_type_of(fed_opt) == "fed_opt"
    assert prov.job_type_of(SERVER_CONFIG) == "standard"
    assert prov.job_type_of(SERVER_CONFIG, {"job_type": "diffusion_model"}) == "diffusion_model"
    assert prov.job_type_of(None) is None


def test_versions_import_nothing() -> None:
    import sys

    before = set(sys.modules)
    found = prov.versions()
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "nvflare")}
    assert found["python"] and found["flip_nvflare"]
