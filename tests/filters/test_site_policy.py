"""A site policy renders into a privacy.json that NVFlare loads, and fails closed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.utils.task_utils import apply_filters
from nvflare.apis.workspace import Workspace
from nvflare.app_common.filters.dxo_blocker import DXOBlocker
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy as StockPercentilePrivacy
from nvflare.fuel.common.excepts import ConfigError
from nvflare.private.fed.app.fl_conf import create_privacy_manager
from nvflare.private.privacy_manager import PrivacyManager, Scope

from flip_nvflare.cli.site_policy import main
from flip_nvflare.filters.percentile_privacy import PercentilePrivacy
from flip_nvflare.filters.site_policy import (
    STRICTEST_SCOPE,
    PercentileSetting,
    SitePolicyError,
    load_policy,
    parse_policy,
    render_site_policy,
)

VALID = textwrap.dedent(
    """\
    version: 1
    minimum:
      percentile_privacy: {percentile: 10, gamma: 0.01}
    default_scope: standard
    scopes:
      standard: {}
      strict:
        percentile_privacy: {percentile: 50, gamma: 0.001}
        properties: {cohort: sensitive}
      careful:
        percentile_privacy: {percentile: 25}
    """
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """An NVFlare client workspace: startup/ and local/ (what Workspace requires)."""
    root = tmp_path / "site-1"
    (root / "startup").mkdir(parents=True)
    (root / "local").mkdir()
    return root


def _render(tmp_path: Path, site: Path, text: str | None) -> tuple[int, dict[str, Any]]:
    policy = tmp_path / "policy.yaml"
    if text is not None:
        policy.write_text(text)
    code = main(["render", str(policy), "--site-workspace", str(site)])
    return code, json.loads((site / "local" / "privacy.json").read_text())


def _manager(site: Path) -> PrivacyManager:
    manager = create_privacy_manager(Workspace(str(site), "site-1"), names_only=False)
    assert isinstance(manager, PrivacyManager)
    return manager


def _result_filters(scope: Scope) -> list[Any]:
    return list(scope.task_result_filters[FilterKey.OUT])


def _run_site_and_job_filters(scope: Scope, result: Shareable, job_filters: dict[str, list[Any]]) -> Shareable:
    """Filter a task result the way an NVFlare client does: site scope first, then the job's."""
    ctx = FLContext()
    ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    return apply_filters("task_result_filters", result, ctx, job_filters, "train", FilterKey.OUT)


def _update(n: int = 2000) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {"w": (rng.standard_normal(n) * 0.05).astype(np.float32)}


# --- a valid policy -----------------------------------------------------------------------------


def test_valid_policy_renders_and_nvflare_loads_it(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, config = _render(tmp_path, site, VALID)
    assert code == 0
    assert "standard (default), strict, careful" in capsys.readouterr().out
    manager = _manager(site)
    assert manager.is_policy_defined()
    assert manager.get_scope("").name == "standard"  # a job naming no scope gets the default
    assert manager.get_scope("no-such-scope") is None  # NVFlare refuses such a job at this site
    assert manager.get_scope("strict").props == {"cohort": "sensitive"}
    expected = {"standard": (10, 0.01), "strict": (50, 0.001), "careful": (25, 0.01)}
    for name, (percentile, gamma) in expected.items():
        blocker, privacy = _result_filters(manager.get_scope(name))
        assert isinstance(blocker, DXOBlocker)
        assert blocker.allow_data_kinds and blocker.configured_data_kinds == ["WEIGHT_DIFF", "WEIGHTS", "METRICS"]
        assert isinstance(privacy, PercentilePrivacy)
        assert (privacy.percentile, privacy.gamma) == (percentile, gamma)
        assert (privacy.off, privacy.min_percentile, privacy.max_gamma) == (False, 10, 0.01)
        assert sorted(privacy.data_kinds) == ["WEIGHTS", "WEIGHT_DIFF"]
        assert not manager.get_scope(name).task_result_filters[FilterKey.IN]  # nothing on the way in
    assert config["_flip_site_policy"]["status"] == "policy applied"
    assert len(config["_flip_site_policy"]["policy_sha256"]) == 64


def test_site_filter_applies_even_when_the_job_filter_is_off(tmp_path: Path, site: Path) -> None:
    _render(tmp_path, site, VALID)
    scope = _manager(site).get_scope("")
    data = _update()
    job_filters = {"train" + FilterKey.DELIMITER + FilterKey.OUT: [PercentilePrivacy(off=True)]}
    out = _run_site_and_job_filters(
        scope, DXO(DataKind.WEIGHT_DIFF, data={"w": data["w"].copy()}).to_shareable(), job_filters
    )
    received = from_shareable(out)
    stock = StockPercentilePrivacy(percentile=10, gamma=0.01).process_dxo(
        DXO(DataKind.WEIGHT_DIFF, data={"w": data["w"].copy()}), Shareable(), FLContext()
    )
    assert received.data["w"].tobytes() == stock.data["w"].tobytes()
    assert np.abs(received.data["w"]).max() <= np.float32(0.01)
    assert received.get_filter_history() == ["PercentilePrivacy"]


def test_full_weights_are_filtered_too_and_other_kinds_are_blocked(tmp_path: Path, site: Path) -> None:
    _render(tmp_path, site, VALID)
    scope = _manager(site).get_scope("strict")
    weights = from_shareable(_run_site_and_job_filters(scope, DXO(DataKind.WEIGHTS, data=_update()).to_shareable(), {}))
    assert np.abs(weights.data["w"]).max() <= np.float32(0.001)
    metrics = from_shareable(_run_site_and_job_filters(scope, DXO(DataKind.METRICS, {"acc": 0.9}).to_shareable(), {}))
    assert metrics.data == {"acc": 0.9}
    with pytest.raises(ContentBlockedException):  # a job cannot relabel weights to dodge the filter
        _run_site_and_job_filters(scope, DXO(DataKind.APP_DEFINED, data=_update()).to_shareable(), {})


def test_scope_settings_default_to_the_minimum() -> None:
    policy = parse_policy(VALID)
    settings = {s.name: s.percentile_privacy for s in policy.scopes}
    assert settings == {
        "standard": PercentileSetting(10, 0.01),
        "strict": PercentileSetting(50, 0.001),
        "careful": PercentileSetting(25, 0.01),
    }


def test_allowed_result_kinds_can_be_widened() -> None:
    policy = parse_policy(VALID + "allowed_result_kinds: [WEIGHT_DIFF, METRICS, STATISTICS]\n")
    assert policy.allowed_result_kinds == ("WEIGHT_DIFF", "METRICS", "STATISTICS")


def test_an_existing_privacy_json_is_replaced(tmp_path: Path, site: Path) -> None:
    (site / "local" / "privacy.json").write_text('{"scopes": []}')
    code, config = _render(tmp_path, site, VALID)
    assert code == 0 and config["default_scope"] == "standard"
    # no temp file left; the metric policy is rendered next to it
    assert sorted(p.name for p in (site / "local").iterdir()) == ["flip_metric_policy.json", "privacy.json"]


def test_local_folder_is_created(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    policy = tmp_path / "p.yaml"
    policy.write_text(VALID)
    result = render_site_policy(policy, workspace)
    assert result.error is None and result.path == workspace / "local" / "privacy.json" and result.path.is_file()


# --- fail-closed ---------------------------------------------------------------------------------


def _assert_strictest(site: Path, config: dict[str, Any]) -> None:
    assert config["default_scope"] == STRICTEST_SCOPE and len(config["scopes"]) == 1
    scope = _manager(site).get_scope("")
    assert scope.name == STRICTEST_SCOPE
    for kind in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.METRICS, DataKind.APP_DEFINED, "CUSTOM"):
        with pytest.raises(ContentBlockedException):
            _run_site_and_job_filters(scope, DXO(kind, data=_update()).to_shareable(), {})
    bare = make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={"exception": "x"})  # failures still reported
    assert _run_site_and_job_filters(scope, bare, {}) is bare


def test_missing_policy_renders_the_strictest(tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, config = _render(tmp_path, site, None)
    assert code == 1
    err = capsys.readouterr().err
    assert "file not found" in err and "STRICTEST" in err
    assert "file not found" in config["_flip_site_policy"]["reason"]
    _assert_strictest(site, config)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (VALID.replace("percentile: 50", "percentile: 5"), "'scopes.strict.percentile_privacy.percentile' 5 is below"),
        (VALID.replace("gamma: 0.001", "gamma: 0.1"), "'scopes.strict.percentile_privacy.gamma' 0.1 is above"),
        (VALID.replace("{percentile: 25}", "{percentile: 25, off: true}"), "cannot be switched off"),
        (VALID.replace("default_scope: standard", "defualt_scope: standard"), "unknown key(s) defualt_scope"),
        (VALID.replace("default_scope: standard", "default_scope: other"), "'default_scope' must name one of"),
        (VALID.replace("version: 1", "version: 2"), "'version' must be 1"),
        (VALID.replace("version: 1\n", ""), "'version' must be 1, got None"),
        (VALID.replace("  standard: {}", "  bad name: {}"), "scope name 'bad name' is not allowed"),
        (VALID.replace("  standard: {}", f"  {STRICTEST_SCOPE}: {{}}"), "reserved"),
        (VALID.replace("{percentile: 25}", "{percentile: 25, percentile: 5}"), "duplicate key 'percentile'"),
        (VALID.replace("{percentile: 25}", "{percentile: '25'}"), "must be a number from 0 to 100, got '25'"),
        (VALID.replace("{percentile: 25}", "{percentile: yes}"), "must be a number from 0 to 100, got True"),
        (VALID.replace("{percentile: 25}", "{percentile: 250}"), "must be a number from 0 to 100, got 250"),
        (VALID.replace("{percentile: 25}", "{percentile: 25, gama: 0.001}"), "unknown key(s) gama"),
        (VALID.replace("{percentile: 10, gamma: 0.01}", "{percentile: 10}"), "'minimum.percentile_privacy.gamma'"),
        (VALID.replace("{percentile: 10, gamma: 0.01}", "{percentile: 10, gamma: -1}"), "must be a positive number"),
        (VALID.replace("  percentile_privacy: {percentile: 10, gamma: 0.01}\n", ""), "'minimum' must be a mapping"),
        (VALID.replace("{cohort: sensitive}", "[1, 2]"), "'properties' must be a mapping"),
        (VALID + "allowed_result_kinds: [WEIGHT_DIFF, MODEL]\n", "unknown kind(s) MODEL"),
        (VALID + "allowed_result_kinds: []\n", "non-empty list"),
        (VALID.replace("scopes:", "scopes: []\nx:"), "'scopes' must be a mapping"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("version: [1\n", "not valid YAML"),
        ("", "must be a YAML mapping"),
    ],
)
def test_invalid_policy_renders_the_strictest(
    tmp_path: Path, site: Path, text: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, config = _render(tmp_path, site, text)
    assert code == 1
    err = capsys.readouterr().err
    assert words in err, err
    assert words in config["_flip_site_policy"]["reason"]
    assert config["default_scope"] == STRICTEST_SCOPE


def test_invalid_policy_leaves_nvflare_a_loadable_strictest_policy(tmp_path: Path, site: Path) -> None:
    _, config = _render(tmp_path, site, VALID.replace("percentile: 50", "percentile: 5"))
    _assert_strictest(site, config)


def test_all_problems_are_reported_at_once() -> None:
    text = VALID.replace("version: 1", "version: 3").replace("percentile: 50", "percentile: 5")
    with pytest.raises(SitePolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert len(caught.value.problems) == 2
    assert str(caught.value).startswith("p.yaml: ")


def test_hand_weakened_privacy_json_stops_the_job(tmp_path: Path, site: Path) -> None:
    _render(tmp_path, site, VALID)
    path = site / "local" / "privacy.json"
    config = json.loads(path.read_text())
    config["scopes"][0]["task_result_filters"][1]["args"]["percentile"] = 1  # below min_percentile 10
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="below the site minimum"):
        _manager(site)


def test_missing_workspace_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(VALID)
    assert main(["render", str(policy), "--site-workspace", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["render", "p.yaml"]) == 2
    assert main(["--help"]) == 0
    assert "render" in capsys.readouterr().out


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID)
    assert load_policy(path).default_scope == "standard"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SitePolicyError, match="cannot be read"):
        load_policy(path)


def test_allow_list_is_printed_or_merged_keeping_the_sites_own_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from flip_nvflare.cli.site_policy import main
    from flip_nvflare.jobs.allow_list import site_allow_list

    assert main(["allow-list"]) == 0
    assert json.loads(capsys.readouterr().out) == {"class_allow_list": site_allow_list()}
    (tmp_path / "local").mkdir()
    resources = tmp_path / "local" / "resources.json"
    resources.write_text(json.dumps({"format_version": 2, "class_allow_list": ["my_site.Thing"], "other": 1}))
    assert main(["allow-list", "--site-workspace", str(tmp_path)]) == 0
    merged = json.loads(resources.read_text())
    assert merged["other"] == 1 and merged["class_allow_list"][0] == "my_site.Thing"
    assert "flip_nvflare." in merged["class_allow_list"]
    assert main(["allow-list", "--site-workspace", str(tmp_path)]) == 0  # again: nothing doubled
    assert json.loads(resources.read_text())["class_allow_list"] == merged["class_allow_list"]
    resources.write_text("{broken")
    assert main(["allow-list", "--site-workspace", str(tmp_path)]) == 2
    assert resources.read_text() == "{broken"
    assert main(["allow-list", "--site-workspace", str(tmp_path / "nope")]) == 2
