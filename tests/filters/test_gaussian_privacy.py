"""GaussianPrivacy: calibrated against dp-accounting's own numbers, exact clipping, fail-closed, budget cap."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import FilterChainType, FilterContextKey, FilterSource
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.backend import FlipBackend
from flip_nvflare.errors import FlipArgumentTypeError, FlipConfigError, FlipInvalidArgument
from flip_nvflare.filters import gaussian_privacy as gp
from flip_nvflare.filters.accounting import calibrate_noise_multiplier, epsilon_spent
from flip_nvflare.filters.budget import PRIVACY_REPORT_EVENT, BudgetExhausted, BudgetLedger
from flip_nvflare.filters.gaussian_privacy import CLIP_MARGIN, LEDGER_FILE, GaussianPrivacy, privatize
from tests.engine import FakeEngine

Layers = dict[str, Any]


def _norm(data: Layers) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in data.values()))


def _update(seed: int = 0, scale: float = 1.0) -> Layers:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((8, 4, 3)) * scale).astype(np.float32),
        "conv.bias": (rng.standard_normal(8) * scale).astype(np.float32),
        "fc.weight": np.asfortranarray(rng.standard_normal((5, 7)) * scale),  # float64, F-ordered
    }


@pytest.fixture(autouse=True)
def _fresh_ledgers() -> Iterator[None]:
    """Each test is a job of its own (the tests' engines share one job id)."""
    gp._SHARED.clear()
    yield
    gp._SHARED.clear()


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path, server=False, identity="site-1", components={"flip": FlipBackend(mode="dev")})


@pytest.fixture
def prod_engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path, server=False, identity="site-1", components={"flip": FlipBackend(mode="prod")})


def _pair(site: bool = False, **args: Any) -> tuple[GaussianPrivacy, GaussianPrivacy]:
    """The filter on the task data chain and on the task result chain, as NVFlare builds them."""
    data, result = GaussianPrivacy(**args), GaussianPrivacy(**args)
    data.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_DATA_CHAIN)
    result.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_RESULT_CHAIN)
    for f in (data, result):
        f.set_prop(FilterContextKey.SOURCE, FilterSource.SITE if site else FilterSource.JOB)
    return data, result


def _round(
    engine: FakeEngine,
    chains: list[tuple[GaussianPrivacy, GaussianPrivacy]],
    result: DXO | Shareable,
    *,
    round_: int = 0,
    num_rounds: int | None = 3,
    global_model: Layers | None = None,
    task: str = "train",
) -> Shareable:
    """One task at a client: the task data through every data filter (site first), then the result likewise."""
    ctx = engine.new_context()
    ctx.set_prop(FLContextKey.TASK_ID, f"task-{round_}-{id(result)}", private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    task_data = DXO(DataKind.WEIGHTS, data=global_model or {"w": np.zeros(1, np.float32)}).to_shareable()
    task_data.set_header(AppConstants.CURRENT_ROUND, round_)
    if num_rounds is not None:
        task_data.set_header(AppConstants.NUM_ROUNDS, num_rounds)
    for data_filter, _ in chains:
        task_data = data_filter.process(task_data, ctx)
    reply = result.to_shareable() if isinstance(result, DXO) else result
    for _, result_filter in chains:
        reply = result_filter.process(reply, ctx)
    return reply


# --- accounting: dp-accounting's own numbers --------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("epsilon", "delta", "rounds"), [(8.0, 1e-5, 3), (1.0, 1e-6, 5), (3.0, 1e-5, 1)])
def test_calibrated_noise_matches_dp_accounting(accountant: str, epsilon: float, delta: float, rounds: int) -> None:
    ours = calibrate_noise_multiplier(epsilon, delta, rounds, accountant)
    make = {"rdp": RdpAccountant, "pld": PLDAccountant}[accountant]
    theirs = dp_accounting.calibrate_dp_mechanism(
        make, lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds), epsilon, delta
    )
    assert ours == pytest.approx(theirs, rel=1e-6)
    check = make()
    check.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(ours), rounds))
    assert check.get_epsilon(delta) <= epsilon * (1 + 1e-6)
    assert check.get_epsilon(delta) == pytest.approx(epsilon, rel=1e-2)  # calibrated, not merely safe


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_after_k_rounds_matches_dp_accounting(accountant: str) -> None:
    ledger = BudgetLedger(1e-5, accountant)
    for k, z in enumerate([1.1, 1.1, 1.1, 2.0, 2.0], start=1):
        release = ledger.record(k - 1, z, 1.0)
        account = {"rdp": RdpAccountant, "pld": PLDAccountant}[accountant]()
        multipliers = [1.1, 1.1, 1.1, 2.0, 2.0][:k]
        for value in multipliers:
            account.compose(dp_accounting.GaussianDpEvent(value))
        assert release.epsilon == pytest.approx(account.get_epsilon(1e-5), rel=1e-6)
    assert epsilon_spent([], 1e-5) == 0.0


def test_the_filter_reports_dp_accountings_epsilon_after_each_round(engine: FakeEngine) -> None:
    chain = _pair(noise_multiplier=1.3, clip_norm=0.5, delta=1e-5, seed=1)
    for k in range(4):
        reply = _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, data=_update(k)), round_=k)
        meta = from_shareable(reply).get_meta_prop(gp.META_KEY)
        account = RdpAccountant()
        account.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.3), k + 1))
        assert meta["epsilon_spent"] == pytest.approx(account.get_epsilon(1e-5), rel=1e-6)
        assert meta["noise_multiplier"] == 1.3 and meta["clip_norm"] == 0.5 and meta["update"] == "WEIGHT_DIFF"
    reports = [e.data for e in engine.fired(PRIVACY_REPORT_EVENT)]
    assert [r["round"] for r in reports] == [0, 1, 2, 3]
    for report in reports:  # numbers and fixed words only
        assert all(v is None or isinstance(v, (int, float, str)) for k, v in report.items() if k != "__headers__")
    ledger = json.loads((engine.run_dir / LEDGER_FILE).read_text())
    assert ledger["site"] == "site-1" and len(ledger["releases"]) == 4
    assert ledger["epsilon_spent"] == pytest.approx(reports[-1]["epsilon_spent"])


def test_a_target_epsilon_is_calibrated_over_the_jobs_planned_rounds(engine: FakeEngine) -> None:
    chain = _pair(target_epsilon=4.0, clip_norm=1.0, delta=1e-5, seed=2)
    epsilons = []
    for k in range(5):
        reply = _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, data=_update(k)), round_=k, num_rounds=5)
        meta = from_shareable(reply).get_meta_prop(gp.META_KEY)
        assert meta["noise_multiplier"] == pytest.approx(calibrate_noise_multiplier(4.0, 1e-5, 5), rel=1e-12)
        epsilons.append(meta["epsilon_spent"])
    assert epsilons == sorted(epsilons)
    assert epsilons[-1] <= 4.0 * (1 + 1e-6) and epsilons[-1] == pytest.approx(4.0, rel=1e-2)


def test_a_target_epsilon_without_planned_rounds_is_refused(engine: FakeEngine) -> None:
    chain = _pair(target_epsilon=4.0, clip_norm=1.0, delta=1e-5)
    with pytest.raises(FlipConfigError, match="planned rounds"):
        _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, data=_update()), num_rounds=None)


# --- clipping and noise ----------------------------------------------------------------------------


def test_clipping_is_exact_for_the_whole_update() -> None:
    data = _update(scale=3.0)
    original = {k: v.copy() for k, v in data.items()}
    norm = _norm(original)
    rng = np.random.default_rng(0)
    out, report = privatize(data, clip_norm=1.0, noise_std=1e-300, rng=rng)  # noise far below float resolution
    assert report.clipped and report.norm == pytest.approx(norm, rel=1e-6)
    factor = 1.0 * (1 - CLIP_MARGIN) / report.norm
    for name, value in out.items():
        assert value.dtype == original[name].dtype and value.shape == original[name].shape
        np.testing.assert_array_equal(value, original[name] * value.dtype.type(factor))
    assert 1 - 2e-6 <= _norm(out) <= 1.0


def test_clipping_per_layer_bounds_each_layer_and_the_total() -> None:
    data = _update(scale=3.0)
    data["conv.bias"] *= np.float32(1e-3)  # within its share: left as it is
    small = data["conv.bias"].copy()
    out, _ = privatize(data, clip_norm=1.5, noise_std=1e-300, rng=np.random.default_rng(0), per_layer=True)
    share = 1.5 / math.sqrt(3)
    for name in ("conv.weight", "fc.weight"):
        assert share * (1 - 2e-6) <= _norm({name: out[name]}) <= share
    np.testing.assert_array_equal(out["conv.bias"], small)
    assert _norm(out) <= 1.5


def test_an_update_within_the_bound_is_not_scaled() -> None:
    data = _update(scale=0.01)
    original = {k: v.copy() for k, v in data.items()}
    out, report = privatize(data, clip_norm=10.0, noise_std=1e-300, rng=np.random.default_rng(0))
    assert not report.clipped
    for name in out:
        np.testing.assert_array_equal(out[name], original[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_empirical_noise_std_is_within_one_percent(dtype: type[np.floating[Any]]) -> None:
    n = 2_000_000 if dtype != np.float16 else 400_000
    data = {"w": np.zeros(n, dtype=dtype)}
    z, clip = 1.7, 0.25
    out, _ = privatize(data, clip_norm=clip, noise_std=z * clip, rng=np.random.default_rng(12345))
    values = out["w"].astype(np.float64)
    assert abs(values.std() / (z * clip) - 1) < 0.01
    assert abs(values.mean()) < 5 * z * clip / math.sqrt(n)
    assert out["w"].dtype == dtype


def test_a_seeded_dev_generator_is_reproducible_and_changes_arrays_only_the_result_holds(engine: FakeEngine) -> None:
    outs = []
    for _ in range(2):
        chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, seed=7)
        dxo = DXO(DataKind.WEIGHT_DIFF, data=_update(3))
        outs.append(from_shareable(_round(engine, [chain], dxo)).data)
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name])
    held = _update(3)
    kept = {k: v.copy() for k, v in held.items()}
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, seed=7)
    _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, data=dict(held)))
    for name in held:  # still referenced here: copied, not changed
        np.testing.assert_array_equal(held[name], kept[name])


def test_sites_sharing_a_dev_seed_draw_different_noise() -> None:
    a, b = gp.dev_generator(5, "site-1"), gp.dev_generator(5, "site-2")
    assert not np.array_equal(a.standard_normal(8), b.standard_normal(8))
    np.testing.assert_array_equal(
        gp.dev_generator(5, "site-1").standard_normal(8), gp.dev_generator(5, "site-1").standard_normal(8)
    )


def test_without_a_seed_two_runs_differ(engine: FakeEngine) -> None:
    outs = [
        from_shareable(
            _round(
                engine, [_pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)], DXO(DataKind.WEIGHT_DIFF, _update())
            )
        ).data["conv.bias"]
        for _ in range(2)
    ]
    assert not np.array_equal(outs[0], outs[1])


def test_full_weights_are_noised_as_their_difference_against_the_global_model(engine: FakeEngine) -> None:
    global_model = _update(1)
    local = {k: v + np.asarray(3.0, dtype=v.dtype) * _update(2)[k] for k, v in global_model.items()}
    diff = {k: local[k] - global_model[k] for k in local}
    chain = _pair(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5, seed=11)
    reply = _round(
        engine, [chain], DXO(DataKind.WEIGHTS, data={k: v.copy() for k, v in local.items()}), global_model=global_model
    )
    received = from_shareable(reply)
    assert received.data_kind == DataKind.WEIGHTS
    assert received.get_meta_prop(gp.META_KEY)["update"].startswith("WEIGHTS as the difference")
    expected, _ = privatize(
        {k: v.copy() for k, v in diff.items()},
        clip_norm=0.5,
        noise_std=0.5,
        rng=gp.dev_generator(11, "site-1"),
    )
    for name in local:
        np.testing.assert_allclose(received.data[name] - global_model[name], expected[name], rtol=1e-5, atol=1e-5)


def test_the_global_model_is_copied_so_the_executor_cannot_change_it(engine: FakeEngine) -> None:
    global_model = {"w": np.ones(4, np.float32)}
    data_filter, result_filter = _pair(noise_multiplier=1.0, clip_norm=0.1, delta=1e-5, seed=3)
    ctx = engine.new_context()
    ctx.set_prop(FLContextKey.TASK_ID, "t", private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    task_data = DXO(DataKind.WEIGHTS, data=global_model).to_shareable()
    data_filter.process(task_data, ctx)
    global_model["w"][:] = 100.0  # an executor changing the arrays it received, in place
    reply = result_filter.process(DXO(DataKind.WEIGHTS, data={"w": np.full(4, 100.0, np.float32)}).to_shareable(), ctx)
    # the difference against the model received (1) was clipped to 0.1, so the values stay near 1
    assert np.all(np.abs(from_shareable(reply).data["w"] - 1.0) < 0.1 + 10 * 0.1)


# --- fail closed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ({"w": np.array([1.0, np.nan], np.float32)}, FlipInvalidArgument, "1 of 1 layers hold NaN or infinite"),
        ({"w": np.array([1.0, np.inf]), "b": np.ones(2)}, FlipInvalidArgument, "1 of 2 layers hold NaN or infinite"),
        ({"w": np.array([-np.inf], np.float16)}, FlipInvalidArgument, "NaN or infinite"),
        ({"w": np.arange(4)}, FlipArgumentTypeError, "not floating-point numpy arrays \\(int64\\)"),
        ({"w": np.ones(2, dtype=bool)}, FlipArgumentTypeError, "bool"),
        ({"w": np.ones(2, dtype=np.complex64)}, FlipArgumentTypeError, "complex64"),
        ({"w": np.array(["a"], dtype=object)}, FlipArgumentTypeError, "object"),
        ({"w": [1.0, 2.0]}, FlipArgumentTypeError, "list"),
        ({}, FlipInvalidArgument, "no values"),
        ({"w": np.zeros(0, np.float32)}, FlipInvalidArgument, "no values"),
    ],
)
def test_updates_that_cannot_be_noised_are_refused(
    engine: FakeEngine, layers: Layers, error: type[Exception], match: str
) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, seed=1)
    with pytest.raises(error, match=match):
        _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, data=layers))
    assert not engine.fired(PRIVACY_REPORT_EVENT)  # nothing was released or counted


def test_huge_values_do_not_overflow_into_a_release() -> None:
    with pytest.raises(FlipInvalidArgument, match="does not fit"):
        privatize({"w": np.ones(3, np.float32)}, clip_norm=1e37, noise_std=1e37, rng=np.random.default_rng(0))
    out, report = privatize(
        {"w": np.full(3, 3e38, np.float32)}, clip_norm=1.0, noise_std=1.0, rng=np.random.default_rng(0)
    )
    assert report.clipped and np.isfinite(out["w"]).all() and _norm(out) < 20


def test_full_weights_without_the_global_model_are_refused(engine: FakeEngine) -> None:
    result_only = GaussianPrivacy(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    result_only.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_RESULT_CHAIN)
    ctx = engine.new_context()
    with pytest.raises(FlipInvalidArgument, match="global model this site received is not known"):
        result_only.process(DXO(DataKind.WEIGHTS, data=_update()).to_shareable(), ctx)


def test_full_weights_of_another_shape_are_refused(engine: FakeEngine) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    with pytest.raises(FlipInvalidArgument, match="differ in shape"):
        _round(engine, [chain], DXO(DataKind.WEIGHTS, {"w": np.ones(3)}), global_model={"w": np.ones(2)})
    with pytest.raises(FlipInvalidArgument, match="different layer set"):
        _round(engine, [chain], DXO(DataKind.WEIGHTS, {"v": np.ones(2)}), global_model={"w": np.ones(2)})


@pytest.mark.parametrize("kind", [DataKind.APP_DEFINED, DataKind.FL_MODEL, DataKind.STATISTICS, DataKind.COLLECTION])
def test_other_dxo_kinds_are_refused(engine: FakeEngine, kind: str) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    data: Any = {"inner": DXO(DataKind.WEIGHT_DIFF, _update())} if kind == DataKind.COLLECTION else _update()
    with pytest.raises(FlipInvalidArgument, match="only WEIGHT_DIFF and WEIGHTS"):
        _round(engine, [chain], DXO(kind, data=data))


def test_metrics_pass_and_bare_replies_pass_but_other_payloads_do_not(engine: FakeEngine) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    metrics = _round(engine, [chain], DXO(DataKind.METRICS, data={"acc": 0.5}))
    assert from_shareable(metrics).data == {"acc": 0.5}
    bare = make_reply(ReturnCode.OK, headers={"flip_summary": {"n": 1}})
    assert _round(engine, [chain], bare) is bare
    smuggled = Shareable()
    smuggled["weights"] = np.ones(3)
    with pytest.raises(FlipInvalidArgument, match="not a DXO but carries 1 entries"):
        _round(engine, [chain], smuggled)


def test_a_failed_result_leaves_with_its_headers_only(engine: FakeEngine) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    failed = DXO(DataKind.WEIGHT_DIFF, _update()).to_shareable()
    failed.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header("exception", "sanitized text")
    out = _round(engine, [chain], failed)
    assert [k for k in out if k != "__headers__"] == []
    assert out.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and out.get_header("exception") == "sanitized text"


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"noise_multiplier": True}, FlipArgumentTypeError, "noise_multiplier must be a number"),
        ({"noise_multiplier": "1.0"}, FlipArgumentTypeError, "noise_multiplier must be a number"),
        ({"noise_multiplier": 0}, FlipConfigError, "noise_multiplier must be above 0"),
        ({"noise_multiplier": -1.0}, FlipConfigError, "above 0"),
        ({"noise_multiplier": math.nan}, FlipConfigError, "finite"),
        ({"minimum": {"clip_norm": 1.0, "delta": 1e-5}}, FlipConfigError, "set noise_multiplier .* or target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": -8}, FlipConfigError, "target_epsilon must be above 0"),
        ({"noise_multiplier": None, "target_epsilon": False}, FlipArgumentTypeError, "target_epsilon"),
        ({"clip_norm": math.inf}, FlipConfigError, "clip_norm must be a finite number"),
        ({"clip_norm": 0.0}, FlipConfigError, "clip_norm must be above 0"),
        ({"clip_norm": True}, FlipArgumentTypeError, "clip_norm"),
        ({"delta": 1.0}, FlipConfigError, "delta must be between 0 and 1"),
        ({"delta": 0}, FlipConfigError, "delta must be between 0 and 1"),
        ({"max_epsilon": -1}, FlipConfigError, "max_epsilon must be above 0"),
        ({"per_layer": "false"}, FlipConfigError, "per_layer must be true or false"),
        ({"per_layer": 1}, FlipConfigError, "per_layer must be true or false"),
        ({"accountant": "moments"}, FlipConfigError, "accountant must be one of rdp, pld"),
        ({"num_rounds": True}, FlipConfigError, "num_rounds must be a whole number"),
        ({"num_rounds": 0}, FlipConfigError, "num_rounds"),
        ({"seed": True}, FlipConfigError, "seed must be a whole number"),
        ({"seed": -3}, FlipConfigError, "seed must be a whole number"),
        ({"train_tasks": "train"}, FlipConfigError, "train_tasks must be a list"),
        ({"minimum": {"clip_norm": 1.0, "delta": 1e-5, "noise_multiplier": 2.0}}, FlipConfigError, "weaker than"),
        ({"minimum": {"clip_norm": 0.5, "delta": 1e-5, "noise_multiplier": 1.0}}, FlipConfigError, "clip_norm 1.0"),
        (
            {"minimum": {"clip_norm": 1.0, "delta": 1e-5, "noise_multiplier": 1.0, "off": True}},
            FlipConfigError,
            "unknown",
        ),
    ],
)
def test_bad_arguments_are_refused_when_the_filter_is_built(
    args: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        GaussianPrivacy(**{"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, **args})


def test_without_noise_settings_the_noise_multiplier_is_one() -> None:
    assert GaussianPrivacy().settings.noise_multiplier == gp.DEFAULT_NOISE_MULTIPLIER == 1.0
    assert GaussianPrivacy(target_epsilon=4.0).settings.noise_multiplier is None  # calibrated instead


def test_num_rounds_placeholder_means_read_it_from_the_task() -> None:
    assert GaussianPrivacy(noise_multiplier=1.0, num_rounds="{global_rounds}").settings.num_rounds is None


def test_a_fixed_seed_is_refused_outside_dev_mode(prod_engine: FakeEngine, tmp_path: Path) -> None:
    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, seed=1)
    with pytest.raises(FlipConfigError, match="accepted only in dev mode; this job's flip_mode is prod"):
        _round(prod_engine, [chain], DXO(DataKind.WEIGHT_DIFF, _update()))
    no_backend = FakeEngine(tmp_path / "other", server=False)
    with pytest.raises(FlipConfigError, match="flip_mode is unknown"):
        _round(no_backend, [_pair(noise_multiplier=1.0, seed=1)], DXO(DataKind.WEIGHT_DIFF, _update()))
    # without a seed, prod noise comes from a generator seeded by the OS's secure source
    out = from_shareable(_round(prod_engine, [_pair(noise_multiplier=1.0)], DXO(DataKind.WEIGHT_DIFF, _update())))
    assert out.get_meta_prop(gp.META_KEY)["noise_multiplier"] == 1.0


# --- the budget ------------------------------------------------------------------------------------


def test_the_round_that_would_exceed_the_cap_is_not_trained(engine: FakeEngine) -> None:
    z, cap = 1.0, 12.0
    spent = [epsilon_spent([(z, k)], 1e-5) for k in range(1, 20)]
    allowed = max(k for k, e in enumerate(spent, start=1) if e <= cap)  # releases within the cap
    assert 1 < allowed < 19
    chain = _pair(noise_multiplier=z, clip_norm=1.0, delta=1e-5, max_epsilon=cap, seed=5)
    trained = []
    with pytest.raises(BudgetExhausted, match=f"round {allowed} would bring epsilon to .* above this site's cap of 12"):
        for k in range(20):
            _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, _update(k)), round_=k, num_rounds=20)
            trained.append(k)
    assert trained == list(range(allowed))
    reports = [e.data for e in engine.fired(PRIVACY_REPORT_EVENT)]
    assert [r["kind"] for r in reports] == ["release"] * allowed + ["budget_exhausted"]
    refused = reports[-1]
    assert refused["round"] == allowed and refused["epsilon_cap"] == cap
    assert refused["epsilon_spent"] == pytest.approx(spent[allowed - 1]) and refused["epsilon_projected"] > cap
    assert all(isinstance(v, (int, float, str)) for k, v in refused.items() if k != "__headers__")


def test_the_cap_is_checked_on_the_task_data_before_training(engine: FakeEngine) -> None:
    data_filter, result_filter = _pair(noise_multiplier=0.5, clip_norm=1.0, delta=1e-5, max_epsilon=0.1)
    ctx = engine.new_context()
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    with pytest.raises(BudgetExhausted, match="round \\? would bring epsilon"):
        data_filter.process(DXO(DataKind.WEIGHTS, {"w": np.zeros(2)}).to_shareable(), ctx)
    # a validation task is not checked (it releases no update)
    ctx.set_prop(FLContextKey.TASK_NAME, "validate", private=True, sticky=False)
    data_filter.process(DXO(DataKind.WEIGHTS, {"w": np.zeros(2)}).to_shareable(), ctx)
    # and a result that gets past the task data anyway is refused before it leaves
    with pytest.raises(BudgetExhausted):
        result_filter.process(DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(2)}).to_shareable(), ctx)


# --- the site's policy and the job's own settings: strictest wins -----------------------------------

SITE: dict[str, Any] = {
    "noise_multiplier": 1.0,
    "clip_norm": 1.0,
    "delta": 1e-5,
    "max_epsilon": 50.0,
    "minimum": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, "max_epsilon": 50.0},
}


@pytest.mark.parametrize(
    "job",
    [
        {"noise_multiplier": 0.1, "clip_norm": 1.0, "delta": 1e-5},  # less noise
        {"noise_multiplier": 1.0, "clip_norm": 100.0, "delta": 1e-5},  # a larger clip norm
        {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 0.5},  # a larger delta
        {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, "max_epsilon": 1e6},  # a larger cap
        {"noise_multiplier": None, "target_epsilon": 1e6, "clip_norm": 1.0, "delta": 1e-5},  # a huge epsilon
    ],
)
def test_a_job_cannot_weaken_the_sites_settings(engine: FakeEngine, job: dict[str, Any]) -> None:
    site, own = _pair(site=True, **SITE), _pair(**job)
    outs = []
    for k in range(3):
        reply = _round(engine, [site, own], DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(200_000, np.float32)}), round_=k)
        outs.append(from_shareable(reply))
    meta = outs[-1].get_meta_prop(gp.META_KEY)
    assert meta["noise_multiplier"] == 1.0 and meta["clip_norm"] == 1.0 and meta["delta"] == 1e-5
    assert abs(outs[-1].data["w"].std() - 1.0) < 0.01  # the site's noise, added once
    assert site[1].ledger is not None and site[1].ledger.cap == 50.0
    assert own[1].ledger is None  # the job's own filter released nothing of its own


def test_a_job_can_make_the_sites_settings_stricter(engine: FakeEngine) -> None:
    site, own = _pair(site=True, **SITE), _pair(noise_multiplier=3.0, clip_norm=0.5, delta=1e-7, max_epsilon=20.0)
    reply = _round(engine, [site, own], DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(200_000, np.float32)}))
    received = from_shareable(reply)
    meta = received.get_meta_prop(gp.META_KEY)
    assert (meta["noise_multiplier"], meta["clip_norm"], meta["delta"]) == (3.0, 0.5, 1e-7)
    assert abs(received.data["w"].std() / 1.5 - 1) < 0.01  # 3.0 * 0.5, added once
    assert site[1].ledger is not None and site[1].ledger.cap == 20.0


def test_a_hand_weakened_site_filter_is_refused() -> None:
    weakened = {**SITE, "noise_multiplier": 0.2}
    with pytest.raises(FlipConfigError, match=r"noise_multiplier 0\.2 is below the site minimum 1\.0"):
        GaussianPrivacy(**weakened)


def test_the_jobs_filter_alone_applies_its_own_settings(engine: FakeEngine) -> None:
    reply = _round(
        engine, [_pair(noise_multiplier=2.0, clip_norm=0.5, delta=1e-5)], DXO(DataKind.WEIGHT_DIFF, _update())
    )
    assert from_shareable(reply).get_meta_prop(gp.META_KEY)["noise_multiplier"] == 2.0


def test_an_update_only_the_result_holds_is_noised_in_place_with_little_extra_memory(engine: FakeEngine) -> None:
    import tracemalloc

    chain = _pair(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, seed=9)
    data = {f"l{i}": np.ones(250_000, np.float32) for i in range(4)}  # 4 MB, held by the DXO only
    addresses = [v.ctypes.data for v in data.values()]
    dxo = DXO(DataKind.WEIGHT_DIFF, data=data)
    del data
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = from_shareable(_round(engine, [chain], dxo))
        extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert [v.ctypes.data for v in out.data.values()] == addresses  # the same buffers, changed in place
    assert extra < 1_000_000  # block buffers only, not a copy of the 4 MB update


def test_a_job_running_more_rounds_than_it_planned_is_stopped_at_the_target(engine: FakeEngine) -> None:
    chain = _pair(target_epsilon=3.0, clip_norm=1.0, delta=1e-5, seed=4)
    for k in range(2):  # the controller announces 2 rounds...
        _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, _update(k)), round_=k, num_rounds=2)
    assert chain[1].ledger is not None and chain[1].ledger.epsilon <= 3.0
    with pytest.raises(BudgetExhausted, match="round 2 would bring epsilon"):  # ...and asks for a third
        _round(engine, [chain], DXO(DataKind.WEIGHT_DIFF, _update(2)), round_=2, num_rounds=2)


def test_the_clip_bound_holds_for_a_large_float32_update() -> None:
    rng = np.random.default_rng(8)
    data = {f"w{i}": rng.uniform(0.5, 1.5, 1_500_000).astype(np.float32) for i in range(2)}
    out, report = privatize(data, clip_norm=1.0, noise_std=1e-300, rng=rng)
    assert report.clipped and 1 - 2e-6 <= _norm(out) <= 1.0
