"""Differential privacy in a real simulator run: 2 sites, 2 rounds, a 3x3 NumPy model, dev mode.

Each site's GaussianPrivacy (the job's own filter: the simulator applies no site filters, see
docs/site_policy.md) clips every update to L2 1.0 and adds noise calibrated to epsilon 8 over the
2 planned rounds; the server's PrivacyLedger puts the sites' epsilon into the run summary inside
the results zip and sends it to the (dev) hub as the DP_EPSILON series.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flip_nvflare.filters.accounting import calibrate_noise_multiplier, epsilon_spent
from tests.engine import MODEL_ID
from tests.support.simjob import (
    JobFolders,
    SimulatorProcess,
    client_config,
    flip_backend,
    numpy_model_components,
    read_jsonl,
    scatter_and_gather,
    server_config,
    write_job,
)

pytestmark = pytest.mark.e2e

ROUNDS = 2
DP_ARGS = {"target_epsilon": 8.0, "delta": 1e-5, "clip_norm": 1.0, "seed": 7}

TRAINER = """
import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.shareable import Shareable

from flip_nvflare.metrics import send_metrics_value


class Trainer(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        received = from_shareable(shareable)
        rnd = shareable.get_header("current_round")
        send_metrics_value("train_loss", 1.0 / (1 + rnd), fl_ctx, round=rnd)
        # an update of L2 norm 15: the filter must clip it to 1 before adding noise
        diff = {k: np.full(np.shape(v), 5.0, dtype=np.float32) for k, v in received.data.items()}
        return DXO(DataKind.WEIGHT_DIFF, data=diff).to_shareable()
"""


@dataclass
class Run:
    folders: JobFolders
    return_code: int

    def results_zip(self) -> dict[str, Any]:
        zips = sorted((self.folders.run_dir("server") / "flip_dev" / "results").rglob("*.zip"))
        assert zips, self.folders.log("server")[-3000:]
        with zipfile.ZipFile(zips[-1]) as zf:
            return {
                name: json.loads(zf.read(name)) if name.endswith(".json") else zf.read(name) for name in zf.namelist()
            }


def _run(root: Path, rounds: int, dp_args: dict[str, Any]) -> Run:
    folders = JobFolders(root)
    dp_filter = {"path": "flip_nvflare.filters.GaussianPrivacy", "args": dp_args}
    server = server_config(
        "dev",
        rounds=rounds,
        model_id=MODEL_ID,
        components=[
            flip_backend(mode="{flip_mode}", model_id="{model_id}"),
            {"id": "status", "path": "flip_nvflare.components.StatusReporter", "args": {}},
            {"id": "privacy", "path": "flip_nvflare.components.privacy_ledger.PrivacyLedger", "args": {}},
            {"id": "metrics", "path": "flip_nvflare.components.MetricsForwarder", "args": {}},
            {"id": "upload", "path": "flip_nvflare.components.ResultsUploader", "args": {}},
            *numpy_model_components("WEIGHT_DIFF"),
        ],
        workflows=[scatter_and_gather(shareable_generator_id="shareable_generator", aggregator_id="aggregator")],
    )
    client = client_config(
        "dev",
        executors=[{"tasks": ["train"], "executor": {"path": "dp_app.Trainer", "args": {}}}],
        components=[flip_backend(mode="{flip_mode}")],
    )
    client["task_data_filters"] = [{"tasks": ["train"], "filters": [dp_filter]}]
    client["task_result_filters"] = [{"tasks": ["train"], "filters": [dp_filter]}]
    write_job(folders.job_dir, name="privacy", server=server, client=client, custom={"dp_app.py": TRAINER})
    process = SimulatorProcess(folders.job_dir, folders.workspace, folders.root / "sim.log", env={})
    return Run(folders, process.wait(timeout=240))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("privacy-run"), ROUNDS, DP_ARGS)


#: A cap between the epsilon of 2 and of 3 releases at noise multiplier 1: round 2 (the third) is refused.
CAP = (epsilon_spent([(1.0, 2)], 1e-5) + epsilon_spent([(1.0, 3)], 1e-5)) / 2


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Run:
    args = {"noise_multiplier": 1.0, "delta": 1e-5, "clip_norm": 1.0, "max_epsilon": CAP, "seed": 3}
    return _run(tmp_path_factory.mktemp("privacy-capped"), 4, args)


def test_the_run_completes(run: Run) -> None:
    assert run.return_code == 0, run.folders.log("server")[-3000:]


def test_the_run_summary_has_each_sites_epsilon_after_each_round(run: Run) -> None:
    summary = run.results_zip()["run_summary.json"]
    section = summary["privacy"]["differential_privacy"]
    z = calibrate_noise_multiplier(8.0, 1e-5, ROUNDS)
    assert set(section) == {"site-1", "site-2"}
    for site in section.values():
        assert [r["round"] for r in site["per_round"]] == [0, 1]
        expected = [epsilon_spent([(z, k)], 1e-5) for k in (1, 2)]
        assert [r["epsilon"] for r in site["per_round"]] == pytest.approx(expected, rel=1e-9)
        assert site["epsilon_spent"] <= 8.0 * (1 + 1e-6)
        assert (site["noise_multiplier"], site["clip_norm"], site["delta"]) == (pytest.approx(z), 1.0, 1e-5)
    assert "neighbouring dataset" in summary["privacy"]["guarantee"]


def test_epsilon_reaches_the_dev_hub_as_a_series_and_the_sites_keep_a_ledger(run: Run) -> None:
    metrics = read_jsonl(run.folders.run_dir("server") / "flip_dev" / "metrics.jsonl")
    epsilon = sorted((m["fl_client_name"], m["global_round"]) for m in metrics if m["label"] == "DP_EPSILON")
    assert epsilon == [("site-1", 0), ("site-1", 1), ("site-2", 0), ("site-2", 1)]
    for site in ("site-1", "site-2"):
        ledger = json.loads((run.folders.run_dir(site) / "privacy_ledger.json").read_text())
        assert ledger["site"] == site and len(ledger["releases"]) == ROUNDS
        assert "Differential privacy: round 1: WEIGHT_DIFF clipped to L2 1" in run.folders.log(site)


def test_the_global_model_moved_by_clipped_noised_updates_only(run: Run) -> None:
    files = run.results_zip()
    model = np.load(io.BytesIO(files["server.npy"]))
    initial = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    # unclipped, two rounds of +5 per value would move the model by 10 everywhere
    z = calibrate_noise_multiplier(8.0, 1e-5, ROUNDS)
    change = model - initial
    assert np.abs(change).max() < 2 * (1.0 + 6 * z)  # two rounds of a clipped update plus bounded noise
    assert not np.allclose(change, 10.0)


def test_a_capped_run_stops_at_the_round_that_would_exceed_the_cap(capped: Run) -> None:
    output = (capped.folders.root / "sim.log").read_text(errors="replace") + capped.folders.log("server")
    for site in ("site-1", "site-2"):
        ledger = json.loads((capped.folders.run_dir(site) / "privacy_ledger.json").read_text())
        assert [r["round"] for r in ledger["releases"]] == [0, 1]  # round 2 was not trained
        assert ledger["epsilon_spent"] <= CAP
    # the first site to be refused stops the run, so the other may never get round 2's task
    refused = [
        site
        for site in ("site-1", "site-2")
        if any(
            f"identity={site}," in line and "budget exhausted: round 2 would bring epsilon to" in line
            for line in output.splitlines()
        )
    ]
    assert refused
    # a failed run's results are kept on the server, not uploaded: the summary is in its results folder
    summary = json.loads((capped.folders.run_dir("server") / "flip_results" / "run_summary.json").read_text())
    section = summary["privacy"]["differential_privacy"]
    exhausted = {s: section[s]["budget_exhausted"]["round"] for s in section if "budget_exhausted" in section[s]}
    assert exhausted and set(exhausted.values()) == {2} and set(exhausted) <= set(refused)
    assert all(r["round"] in (0, 1) for site in section.values() for r in site["per_round"])
    # the sanitized sentence reached the (dev) hub's logs, numbers only
    logs = read_jsonl(capped.folders.run_dir("server") / "flip_dev" / "logs.jsonl")
    texts = [json.dumps(entry) for entry in logs]
    assert sum("differential-privacy budget exhausted: round 2" in t for t in texts) >= 1, texts
    # the job ends as the rules for a failed client result give: ScatterAndGather (ignore_result_error
    # false) stops the run on the site's TASK_DATA_FILTER_ERROR, and the final status is ERROR
    assert "Result from site-" in output and "TASK_DATA_FILTER_ERROR" in output
    statuses = [r["status"] for r in read_jsonl(capped.folders.run_dir("server") / "flip_dev" / "status.jsonl")]
    assert statuses[-1] == "ERROR" and summary["outcome"] == "failed", (statuses, summary["outcome"])
    assert capped.return_code != 0
