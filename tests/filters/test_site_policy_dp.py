"""A site policy can mandate differential privacy and limit the metrics that leave; a job only makes it stricter."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import FilterChainType, FilterContextKey, FilterSource
from nvflare.apis.fl_constant import FilterKey, FLContextKey
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.task_utils import apply_filters
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.common.excepts import ConfigError
from nvflare.private.fed.app.fl_conf import create_privacy_manager
from nvflare.private.privacy_manager import PrivacyManager, Scope

from flip_nvflare.backend import FlipBackend
from flip_nvflare.cli.site_policy import main
from flip_nvflare.filters import gaussian_privacy as gp
from flip_nvflare.filters.gaussian_privacy import GaussianPrivacy
from flip_nvflare.filters.metric_policy import METRIC_POLICY_FILE, MetricPolicy
from flip_nvflare.filters.percentile_privacy import PercentilePrivacy
from flip_nvflare.filters.site_policy import DPSetting, parse_policy
from tests.engine import FakeEngine

DP_POLICY = textwrap.dedent(
    """\
    version: 1
    minimum:
      percentile_privacy: {percentile: 0, gamma: 1000.0}
      differential_privacy:
        clip_norm: 1.0
        delta: 1.0e-5
        noise_multiplier: 1.0
        epsilon: 8
        budget: 10
    default_scope: standard
    scopes:
      standard: {}
      strict:
        differential_privacy: {noise_multiplier: 2.0, clip_norm: 0.5, epsilon: 4, budget: 5, per_layer: true}
    metrics:
      allow: [LOSS_FUNCTION, "val_*"]
      significant_digits: 3
    """
)


@pytest.fixture(autouse=True)
def _fresh_ledgers() -> Iterator[None]:
    gp._SHARED.clear()
    yield
    gp._SHARED.clear()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site-1"
    (root / "startup").mkdir(parents=True)
    (root / "local").mkdir()
    return root


def _render(tmp_path: Path, site: Path, text: str) -> tuple[int, dict[str, Any]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    code = main(["render", str(policy), "--site-workspace", str(site)])
    return code, json.loads((site / "local" / "privacy.json").read_text())


def _manager(site: Path) -> PrivacyManager:
    manager = create_privacy_manager(Workspace(str(site), "site-1"), names_only=False)
    assert isinstance(manager, PrivacyManager)
    return manager


def test_a_dp_policy_renders_the_filter_on_both_chains_and_nvflare_loads_it(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, config = _render(tmp_path, site, DP_POLICY)
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "differential privacy required in scope(s) standard, strict" in out
    assert "metric labels allowed to leave: LOSS_FUNCTION, val_*" in out
    manager = _manager(site)
    expected = {"standard": (1.0, 1.0, 8.0, 10.0, False), "strict": (2.0, 0.5, 4.0, 5.0, True)}
    for name, (z, clip, epsilon, cap, per_layer) in expected.items():
        scope = manager.get_scope(name)
        results = scope.task_result_filters[FilterKey.OUT]
        assert isinstance(results[1], PercentilePrivacy) and isinstance(results[-1], GaussianPrivacy)  # DP last
        (data,) = scope.task_data_filters[FilterKey.IN]
        assert isinstance(data, GaussianPrivacy)
        for dp in (results[-1], data):
            s = dp.settings
            assert (s.noise_multiplier, s.clip_norm, s.target_epsilon, s.max_epsilon, s.per_layer) == (
                z,
                clip,
                epsilon,
                cap,
                per_layer,
            )
            assert dp.minimum is not None and dp.minimum.noise_multiplier == 1.0 and dp.minimum.max_epsilon == 10.0
            assert dp.is_site_filter()
    metrics = json.loads((site / "local" / METRIC_POLICY_FILE).read_text())
    assert metrics["allow"] == ["LOSS_FUNCTION", "val_*"] and metrics["significant_digits"] == 3
    assert metrics["_flip_site_policy"]["policy_sha256"] == config["_flip_site_policy"]["policy_sha256"]
    policy = MetricPolicy.from_file(site / "local" / METRIC_POLICY_FILE)
    assert policy.allows("val_dice") and not policy.allows("train_loss")


def test_without_dp_or_metrics_sections_nothing_changes(tmp_path: Path, site: Path) -> None:
    text = (
        "version: 1\nminimum:\n  percentile_privacy: {percentile: 10, gamma: 0.01}\ndefault_scope: s\nscopes: {s: {}}\n"
    )
    code, config = _render(tmp_path, site, text)
    assert code == 0
    assert config["scopes"][0]["task_data_filters"] == [] and len(config["scopes"][0]["task_result_filters"]) == 2
    assert json.loads((site / "local" / METRIC_POLICY_FILE).read_text())["allow"] is None


def test_a_scope_may_require_dp_without_a_site_minimum() -> None:
    text = DP_POLICY.replace(
        "  differential_privacy:\n    clip_norm: 1.0\n    delta: 1.0e-5\n    noise_multiplier: 1.0\n    epsilon: 8\n"
        "    budget: 10\n",
        "",
    ).replace("{noise_multiplier: 2.0,", "{delta: 1.0e-6, noise_multiplier: 2.0,")
    policy = parse_policy(text)
    scopes = {s.name: s.differential_privacy for s in policy.scopes}
    assert scopes["standard"] is None
    assert scopes["strict"] == DPSetting(
        clip_norm=0.5, delta=1e-6, noise_multiplier=2.0, epsilon=4, budget=5, per_layer=True, accountant="rdp"
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("noise_multiplier: 2.0", "noise_multiplier: 0.5"), "noise_multiplier 0.5 is below the site minimum 1.0"),
        (("clip_norm: 0.5", "clip_norm: 5"), "clip_norm 5.0 is above the site minimum's 1.0"),
        (("epsilon: 4", "epsilon: 80"), "epsilon 80.0 is above the site minimum's 8.0"),
        (("budget: 5", "budget: 50"), "budget 50.0 is above the site minimum's 10.0"),
        (("per_layer: true}", "per_layer: true, off: true}"), "cannot be switched off"),
        (("per_layer: true}", "per_layer: 'yes'}"), "per_layer' must be true or false"),
        (("per_layer: true}", "per_layer: true, accountant: moments}"), "accountant' must be one of rdp, pld"),
        (("per_layer: true}", "per_layer: true, sigma: 3}"), "unknown key(s) sigma"),
        (("delta: 1.0e-5", "delta: 1e-5"), "YAML reads 1e-5 as text: write 1.0e-5"),
        (("delta: 1.0e-5", "delta: 1.5"), "'minimum.differential_privacy.delta' must be below 1"),
        (("    clip_norm: 1.0\n", ""), "'minimum.differential_privacy.clip_norm' is required"),
        (("    noise_multiplier: 1.0\n    epsilon: 8\n", ""), "needs 'noise_multiplier' or 'epsilon'"),
        (("clip_norm: 1.0\n", "clip_norm: -1.0\n"), "must be a positive number"),
        (("clip_norm: 1.0\n", "clip_norm: true\n"), "must be a positive number, got True"),
        (("significant_digits: 3", "significant_digits: 30"), "from 1 to 17"),
        (('allow: [LOSS_FUNCTION, "val_*"]', 'allow: "val_*"'), "'metrics.allow' must be a list"),
        (('allow: [LOSS_FUNCTION, "val_*"]', 'allow: ["a\\nb"]'), "printable characters"),
        (("significant_digits: 3", "digits: 3"), "'metrics' has unknown key(s) digits"),
    ],
)
def test_weaker_or_malformed_dp_and_metric_settings_render_the_strictest(
    tmp_path: Path, site: Path, change: tuple[str, str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, config = _render(tmp_path, site, DP_POLICY.replace(*change, 1))
    err = capsys.readouterr().err
    assert code == 1 and words in err, err
    assert config["default_scope"] == "flip-strictest"
    metrics = json.loads((site / "local" / METRIC_POLICY_FILE).read_text())
    assert metrics["allow"] == [] and "STRICTEST" in metrics["_flip_site_policy"]["status"]


def test_a_hand_weakened_dp_filter_stops_the_job(tmp_path: Path, site: Path) -> None:
    _render(tmp_path, site, DP_POLICY)
    path = site / "local" / "privacy.json"
    config = json.loads(path.read_text())
    config["scopes"][0]["task_result_filters"][-1]["args"]["noise_multiplier"] = 0.01
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="below the site minimum"):
        _manager(site)


def _client_round(engine: FakeEngine, scope: Scope, job_filters: dict[str, list[Any]], update: Any) -> Shareable:
    """A train task through the site's scope and the job's filters, as NVFlare's client runner applies them."""
    ctx = engine.new_context()
    ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_ID, "t-1", private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    task = DXO(DataKind.WEIGHTS, data={"w": np.zeros(3)}).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    task.set_header(AppConstants.NUM_ROUNDS, 3)
    apply_filters("task_data_filters", task, ctx, job_filters, "train", FilterKey.IN)
    result = DXO(DataKind.WEIGHT_DIFF, data={"w": update}).to_shareable()
    return apply_filters("task_result_filters", result, ctx, job_filters, "train", FilterKey.OUT)


def _job_filter(chain: str, **args: Any) -> GaussianPrivacy:
    f = GaussianPrivacy(**args)
    f.set_prop(FilterContextKey.CHAIN_TYPE, chain)
    f.set_prop(FilterContextKey.SOURCE, FilterSource.JOB)
    return f


def _job(**args: Any) -> dict[str, list[Any]]:
    return {
        "train" + FilterKey.DELIMITER + FilterKey.IN: [_job_filter(FilterChainType.TASK_DATA_CHAIN, **args)],
        "train" + FilterKey.DELIMITER + FilterKey.OUT: [_job_filter(FilterChainType.TASK_RESULT_CHAIN, **args)],
    }


@pytest.mark.parametrize(
    "weaker",
    [
        {"noise_multiplier": 0.01, "clip_norm": 1.0},
        {"noise_multiplier": 1.0, "clip_norm": 1000.0},
        {"noise_multiplier": None, "target_epsilon": 1000.0, "clip_norm": 1.0},
    ],
)
def test_a_job_trying_to_weaken_the_policy_gets_the_sites_settings(
    tmp_path: Path, site: Path, weaker: dict[str, Any]
) -> None:
    _render(tmp_path, site, DP_POLICY)
    scope = _manager(site).get_scope("standard")
    engine = FakeEngine(tmp_path / "run", server=False, components={"flip": FlipBackend(mode="prod")})
    received = from_shareable(_client_round(engine, scope, _job(delta=1e-5, **weaker), np.zeros(400_000, np.float32)))
    meta = received.get_meta_prop(gp.META_KEY)
    site_z = gp.calibrate_noise_multiplier(8.0, 1e-5, 3)
    assert meta["clip_norm"] == 1.0 and meta["noise_multiplier"] == pytest.approx(max(1.0, site_z))
    assert abs(received.data["w"].std() / meta["noise_multiplier"] - 1) < 0.01


def test_a_stricter_job_is_applied_by_the_site_once(tmp_path: Path, site: Path) -> None:
    _render(tmp_path, site, DP_POLICY)
    scope = _manager(site).get_scope("standard")
    engine = FakeEngine(tmp_path / "run", server=False, components={"flip": FlipBackend(mode="prod")})
    job = _job(noise_multiplier=5.0, clip_norm=0.2, delta=1e-6)
    received = from_shareable(_client_round(engine, scope, job, np.zeros(400_000, np.float32)))
    meta = received.get_meta_prop(gp.META_KEY)
    assert (meta["noise_multiplier"], meta["clip_norm"], meta["delta"]) == (5.0, 0.2, 1e-6)
    assert abs(received.data["w"].std() / (5.0 * 0.2) - 1) < 0.01  # noise added once, not twice
