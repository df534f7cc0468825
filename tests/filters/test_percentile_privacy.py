"""PercentilePrivacy must give NVFlare's stock filter's output bit for bit, with less work."""

from __future__ import annotations

import copy
import logging
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy as StockPercentilePrivacy

from flip_nvflare.errors import FlipInvalidArgument
from flip_nvflare.filters import percentile_privacy as pp
from flip_nvflare.filters.percentile_privacy import PercentilePrivacy

Layers = dict[str, Any]


@pytest.fixture
def fl_ctx() -> FLContext:
    return FLContext()


@pytest.fixture(params=["copy", "bracket", "radix"])
def selection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with each way of finding the cutoff, scaled down so that small models use it."""
    mode = str(request.param)
    calls = {"bracket": 0, "radix": 0}
    bracket, radix = pp._bracket_select, pp._radix_select

    def counting_bracket(*args: Any) -> Any:
        calls["bracket"] += 1
        return bracket(*args) if mode == "bracket" else (False, None)

    def counting_radix(*args: Any) -> Any:
        calls["radix"] += 1
        return radix(*args)

    monkeypatch.setattr(pp, "_bracket_select", counting_bracket)
    monkeypatch.setattr(pp, "_radix_select", counting_radix)
    monkeypatch.setattr(pp, "_BLOCK", 97)  # odd, so that blocks straddle layer boundaries
    if mode != "copy":
        monkeypatch.setattr(pp, "_COPY_LIMIT", 0)
        monkeypatch.setattr(pp, "_SAMPLE_SIZE", 512)
    if mode == "radix":
        monkeypatch.setattr(pp, "_COLLECT_LIMIT", 5)  # refine most buckets down to single values
    yield mode
    if mode == "copy":
        assert calls == {"bracket": 0, "radix": 0}
    elif mode == "bracket":
        assert calls["bracket"] and not calls["radix"], calls
    else:
        assert calls["radix"], calls


def _model(rng: np.random.Generator, dtypes: list[Any], layers: int = 9, scale: float = 0.01) -> Layers:
    data: Layers = {}
    for i in range(layers):
        shape = tuple(int(d) for d in rng.integers(1, 12, size=int(rng.integers(1, 4))))
        dtype = dtypes[i % len(dtypes)]
        data[f"layer{i}.weight"] = (rng.standard_normal(shape) * scale).astype(dtype)
    return data


def _meta(steps: Any) -> dict[str, Any]:
    return {} if steps is None else {MetaKey.NUM_STEPS_CURRENT_ROUND: steps}


def _stock(data: Layers, fl_ctx: FLContext, steps: Any = None, **args: Any) -> Layers:
    dxo = DXO(DataKind.WEIGHT_DIFF, data=copy.deepcopy(data), meta=_meta(steps))
    out = StockPercentilePrivacy(**args).process_dxo(dxo, Shareable(), fl_ctx)
    assert out is not None
    return dict(out.data)


def _ours(data: Layers, fl_ctx: FLContext, steps: Any = None, **args: Any) -> Layers:
    # deepcopy: arrays only the DXO references, so the in-place path is taken
    dxo = DXO(DataKind.WEIGHT_DIFF, data=copy.deepcopy(data), meta=_meta(steps))
    out = PercentilePrivacy(**args).process_dxo(dxo, Shareable(), fl_ctx)
    assert out is dxo
    return dict(out.data)


def assert_identical(expected: Layers, actual: Layers) -> None:
    assert expected, "no layers to compare"
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        assert type(got) is type(want), name
        assert got.dtype == want.dtype, name
        assert np.shape(got) == np.shape(want), name
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), name


def assert_same_as_stock(data: Layers, fl_ctx: FLContext, steps: Any = None, **args: Any) -> Layers:
    expected = _stock(data, fl_ctx, steps, **args)
    actual = _ours(data, fl_ctx, steps, **args)
    assert_identical(expected, actual)
    return actual


# --- identical output -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtypes",
    [[np.float32], [np.float64], [np.float16], [np.float32, np.float64], [np.float16, np.float32, np.int32]],
    ids=["f32", "f64", "f16", "f32+f64", "f16+f32+i32"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_models_match_stock(selection: str, dtypes: list[Any], seed: int, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(seed)
    data = _model(rng, dtypes, layers=40)
    for percentile in (10, 0, 100, 50, 99.9, float(rng.uniform(0, 100)), int(rng.integers(1, 100))):
        for steps in (None, 3, 2.5):
            assert_same_as_stock(data, fl_ctx, steps, percentile=percentile, gamma=0.015)


@pytest.mark.parametrize(
    ("percentile", "gamma", "steps"),
    [
        (np.float64(10), 0.01, None),  # numpy percentile: numpy promotes it strongly
        (np.float32(37.5), 0.01, None),
        (np.int64(90), 0.01, None),
        (10, np.float64(0.01), None),  # float64 clip bound turns float32 layers into float64
        (10, 0.01, np.int64(4)),  # numpy int steps: float32 / int64 is float64
        (10, 0.01, np.float32(4)),
        (10, 1, 7),  # integer gamma
    ],
)
def test_numpy_typed_arguments_promote_like_stock(
    selection: str, percentile: Any, gamma: Any, steps: Any, fl_ctx: FLContext
) -> None:
    data = _model(np.random.default_rng(5), [np.float32, np.float16], layers=40)
    assert_same_as_stock(data, fl_ctx, steps, percentile=percentile, gamma=gamma)


def test_cutoff_equals_numpy_percentile_bit_for_bit(selection: str) -> None:
    rng = np.random.default_rng(11)
    dtype_sets: list[list[Any]] = [[np.float32], [np.float64], [np.float16], [np.float16, np.float64]]
    percentiles: tuple[Any, ...] = (0, 100, 10, 50, 33.333333, 1e-9, 99.99999, np.float64(72.5), np.float32(12.5))
    for trial in range(30):
        dtypes = dtype_sets[trial % 4]
        pieces = [
            (rng.standard_normal(int(rng.integers(0, 700))) * 10.0 ** int(rng.integers(-6, 3))).astype(
                dtypes[i % len(dtypes)]
            )
            for i in range(int(rng.integers(1, 6)))
        ]
        pieces.append(np.ones(1, dtype=dtypes[0]))  # never empty
        total = sum(p.size for p in pieces)
        common = np.result_type(*pieces)
        for q in (*percentiles, np.int64(3)):
            expected = np.percentile(np.concatenate([np.abs(p) for p in pieces]), q)
            got = pp._percentile_of_abs(pieces, common, total, q)
            assert type(got) is type(expected), (q, common)
            assert got.tobytes() == expected.tobytes(), (q, common, got, expected)


# --- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [0, 100])
def test_percentile_bounds_match_stock(selection: str, percentile: int, fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(3), [np.float32], layers=30)
    assert_same_as_stock(data, fl_ctx, percentile=percentile)


def test_all_zero_diff_stays_zero(selection: str, fl_ctx: FLContext) -> None:
    data = {"a": np.zeros((60, 30), np.float32), "b": -np.zeros(500, np.float32)}
    out = assert_same_as_stock(data, fl_ctx)
    assert set(out) == set(data) and all(not v.any() for v in out.values())


def test_negative_zero_kept_when_cutoff_is_zero(selection: str, fl_ctx: FLContext) -> None:
    data = {"a": np.zeros(3000, np.float32)}
    data["a"][::3] = -0.0
    data["a"][::7] = 0.5
    out = assert_same_as_stock(data, fl_ctx, percentile=0)
    assert np.signbit(out["a"]).any()  # -0.0 is not below a cutoff of 0, so it survives as -0.0


def test_single_layer_and_layers_of_size_one(selection: str, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(4)
    assert_same_as_stock({"only": rng.standard_normal(5000).astype(np.float32)}, fl_ctx)
    assert_same_as_stock({"only": np.array([0.5], np.float32)}, fl_ctx)
    tiny = {f"bias{i}": rng.standard_normal(1).astype(np.float32) for i in range(50)}
    assert_same_as_stock(tiny, fl_ctx, percentile=30)


def test_scalars_count_towards_the_percentile_but_are_not_clipped(selection: str, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(6)
    data: Layers = _model(rng, [np.float32], layers=30)
    data["zero_d"] = np.array(0.5, np.float32)
    data["numpy_scalar"] = np.float64(-3.0)
    data["empty"] = np.zeros((0, 4), np.float32)
    out = assert_same_as_stock(data, fl_ctx, steps=3)
    assert out["numpy_scalar"] == -3.0  # not clipped to gamma


def test_stock_shares_every_value_of_an_update_with_a_nan(fl_ctx: FLContext) -> None:
    # why ours refuses non-finite updates: a NaN cutoff zeroes nothing, so stock shares every value
    data = _model(np.random.default_rng(7), [np.float32], layers=30)
    data["layer3.weight"].flat[2] = np.nan
    out = _stock(data, fl_ctx)
    assert np.count_nonzero(out["layer0.weight"]) == data["layer0.weight"].size


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_updates_are_refused(bad: float, dtype: Any, fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(7), [dtype], layers=30)
    data["layer3.weight"].flat[0] = bad
    data["layer7.weight"].flat[0] = bad
    snapshot = copy.deepcopy(data)
    dxo = DXO(DataKind.WEIGHT_DIFF, data=data)
    with pytest.raises(FlipInvalidArgument, match="2 of 30 layers hold NaN or infinite values") as info:
        PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)
    assert "layer3" not in str(info.value) and "inf," not in str(info.value)  # a count, no names or values
    assert_identical(snapshot, dxo.data)  # refused before anything was changed


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_scalar_layer_is_refused(bad: float, fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(8), [np.float64], layers=4)
    data["scalar"] = np.float64(bad)
    with pytest.raises(FlipInvalidArgument, match="1 of 5 layers"):
        PercentilePrivacy().process_dxo(DXO(DataKind.WEIGHT_DIFF, data=data), Shareable(), fl_ctx)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_step_count_that_overflows_the_update_is_refused(fl_ctx: FLContext) -> None:
    # finite values divided by a tiny step count overflow to inf: refused like an inf in the update
    with pytest.raises(FlipInvalidArgument, match="1 of 1 layers"):
        _ours({"w": np.linspace(-1, 1, 1000, dtype=np.float32)}, fl_ctx, steps=1e-40)


def test_a_refused_update_fails_the_result_filter(fl_ctx: FLContext) -> None:
    shareable = _shareable(DataKind.WEIGHT_DIFF, {"w": np.array([0.1, np.nan, 0.2], np.float32)})
    with pytest.raises(FlipInvalidArgument):
        PercentilePrivacy().process(shareable, fl_ctx)


def test_many_ties_fall_back_to_radix_and_stay_exact(monkeypatch: pytest.MonkeyPatch, fl_ctx: FLContext) -> None:
    monkeypatch.setattr(pp, "_BLOCK", 128)
    monkeypatch.setattr(pp, "_COPY_LIMIT", 0)
    monkeypatch.setattr(pp, "_COLLECT_LIMIT", 300)
    monkeypatch.setattr(pp, "_SAMPLE_SIZE", 1024)
    calls: list[int] = []
    radix = pp._radix_select

    def counting_radix(*args: Any) -> Any:
        calls.append(1)
        return radix(*args)

    monkeypatch.setattr(pp, "_radix_select", counting_radix)
    rng = np.random.default_rng(9)
    values = rng.standard_normal(20_000).astype(np.float32)
    values[rng.random(values.size) < 0.5] = 0.0  # frozen half: one value with 10,000 copies
    values[:2000] = 0.25  # and a second big tie
    for percentile in (10, 49, 50.5, 55, 95):
        assert_same_as_stock({"w": values}, fl_ctx, percentile=percentile)
    assert calls, "the tie-heavy data should have needed the radix fallback at least once"


def test_integer_and_bool_layers_become_float64_like_stock(selection: str, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(10)
    data = {"i": rng.integers(-5, 5, 800).astype(np.int32), "b": rng.random(800) < 0.5}
    out = assert_same_as_stock(data, fl_ctx, gamma=2)
    assert out["i"].dtype == np.float64


def test_fortran_order_and_strided_views_match_stock(selection: str, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(12)
    base = rng.standard_normal((80, 60)).astype(np.float32)
    data = {"f": np.asfortranarray(base), "t": base.T, "strided": base[::2, ::3]}
    assert_same_as_stock(data, fl_ctx)


# --- in place or not ----------------------------------------------------------------------------


def test_arrays_only_the_result_holds_are_filtered_in_place(fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(13)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": rng.standard_normal(1000).astype(np.float32)})
    expected = _stock(dxo.data, fl_ctx)
    address = dxo.data["w"].__array_interface__["data"][0]
    PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)
    assert dxo.data["w"].__array_interface__["data"][0] == address
    assert_identical(expected, dxo.data)


def test_arrays_someone_else_holds_are_left_untouched(fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(14)
    held = rng.standard_normal(1000).astype(np.float32)
    base = rng.standard_normal(2000).astype(np.float32)
    read_only = rng.standard_normal(500).astype(np.float32)
    read_only.flags.writeable = False
    data = {"held": held, "view": base[::2], "read_only": read_only, "held_twice": held}
    before = copy.deepcopy(data), base.copy()
    expected = _stock(data, fl_ctx)
    dxo = DXO(DataKind.WEIGHT_DIFF, data=dict(data))
    PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)
    assert_identical(expected, dxo.data)
    assert_identical(before[0], data)
    assert np.array_equal(base, before[1])
    assert dxo.data["held"] is not held


def test_one_outside_reference_is_enough_to_leave_an_array_alone(fl_ctx: FLContext) -> None:
    mine = np.random.default_rng(20).standard_normal(1000).astype(np.float32)
    snapshot = mine.copy()
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": mine})
    PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)
    assert np.array_equal(mine, snapshot)
    assert not np.array_equal(dxo.data["w"], snapshot)


def test_in_place_false_never_changes_the_input(fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(15)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": rng.standard_normal(1000).astype(np.float32)})
    original = dxo.data["w"]
    keep = original.copy()
    del original
    expected = _stock(dxo.data, fl_ctx)
    inner = dxo.data
    PercentilePrivacy(in_place=False).process_dxo(dxo, Shareable(), fl_ctx)
    assert_identical(expected, dxo.data)
    assert np.array_equal(inner["w"], keep)


def test_in_place_path_needs_no_full_copy(monkeypatch: pytest.MonkeyPatch, fl_ctx: FLContext) -> None:
    rng = np.random.default_rng(16)
    data = {f"l{i}": rng.standard_normal(300_000).astype(np.float32) for i in range(10)}
    model_bytes = sum(v.nbytes for v in data.values())
    dxo = DXO(DataKind.WEIGHT_DIFF, data=data)
    del data
    tracemalloc.start()
    try:
        PercentilePrivacy(percentile=20).process_dxo(dxo, Shareable(), fl_ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < model_bytes / 10, f"peak extra {peak} bytes for a {model_bytes}-byte update"


# --- DXO handling like stock --------------------------------------------------------------------


def _shareable(kind: str, data: Layers, rc: str = ReturnCode.OK) -> Shareable:
    s = DXO(kind, data=data).to_shareable()
    s.set_return_code(rc)
    return s


@pytest.mark.parametrize("kind", [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.METRICS])
@pytest.mark.parametrize("data_kinds", [None, [DataKind.WEIGHT_DIFF]])
def test_data_kinds_and_history_like_stock(kind: str, data_kinds: list[str] | None, fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(17), [np.float32])
    results = []
    for cls in (StockPercentilePrivacy, PercentilePrivacy):
        out = cls(data_kinds=data_kinds).process(_shareable(kind, copy.deepcopy(data)), fl_ctx)
        results.append(from_shareable(out))
    stock, ours = results
    assert ours.data_kind == stock.data_kind
    assert ours.get_filter_history() == stock.get_filter_history()
    assert_identical(stock.data, ours.data)
    filtered = kind in (data_kinds or [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS])
    assert (ours.get_filter_history() == ["PercentilePrivacy"]) is filtered


def test_collection_is_filtered_inside_like_stock(fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(18), [np.float32])
    results = []
    for cls in (StockPercentilePrivacy, PercentilePrivacy):
        inner = {"diff": DXO(DataKind.WEIGHT_DIFF, data=copy.deepcopy(data)), "m": DXO(DataKind.METRICS, {"a": 1})}
        out = cls().process(DXO(DataKind.COLLECTION, data=inner).to_shareable(), fl_ctx)
        results.append(from_shareable(out).data)
    assert_identical(results[0]["diff"].data, results[1]["diff"].data)
    assert results[1]["m"].data == {"a": 1}


def test_non_dxo_results_pass_through(fl_ctx: FLContext) -> None:
    plain = make_reply(ReturnCode.OK, headers={"summary": 3})
    assert PercentilePrivacy().process(plain, fl_ctx) is plain
    assert plain.get_header("summary") == 3


def test_stock_passes_a_failed_result_with_weights_untouched(fl_ctx: FLContext) -> None:
    # why ours overrides process(): NVFlare's DXOFilter skips every result whose return code is not OK
    failed = _shareable(DataKind.WEIGHT_DIFF, {"w": np.ones(10, np.float32)}, rc=ReturnCode.EXECUTION_EXCEPTION)
    assert StockPercentilePrivacy().process(failed, fl_ctx) is failed
    assert from_shareable(failed).data["w"].tolist() == [1.0] * 10


def _failed_with_payload(kind: str) -> Shareable:
    if kind == DataKind.COLLECTION:
        failed = DXO(kind, data={"d": DXO(DataKind.WEIGHTS, {"w": np.ones(4, np.float32)})}).to_shareable()
        failed.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    else:
        failed = _shareable(kind, {"w": np.ones(10, np.float32)}, rc=ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header("exception", "ValueError: sanitized text")
    failed["extra"] = {"w": np.ones(3, np.float32)}  # a payload outside the DXO too
    return failed


@pytest.mark.parametrize("kind", [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.METRICS, DataKind.COLLECTION])
@pytest.mark.parametrize(
    "args", [{}, {"off": True}, {"data_kinds": [DataKind.WEIGHT_DIFF]}, {"min_percentile": 10, "max_gamma": 0.01}]
)
@pytest.mark.parametrize("rc", [ReturnCode.EXECUTION_EXCEPTION, ReturnCode.TASK_ABORTED, "SOMETHING_ELSE"])
def test_a_failed_result_leaves_without_its_payload(
    kind: str, args: dict[str, Any], rc: str, fl_ctx: FLContext
) -> None:
    failed = _failed_with_payload(kind)
    failed.set_return_code(rc)
    out = PercentilePrivacy(**args).process(failed, fl_ctx)
    assert out.get_return_code() == rc
    assert out.get_header("exception") == "ValueError: sanitized text"
    assert set(out) == {ReservedHeaderKey.HEADERS}
    assert out.get_header(ReservedHeaderKey.CONTENT_TYPE) is None
    with pytest.raises(ValueError):
        from_shareable(out)


def test_a_failed_result_without_payload_is_unchanged(fl_ctx: FLContext) -> None:
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={"exception": "boom"})
    before = copy.deepcopy(failed)
    assert PercentilePrivacy().process(failed, fl_ctx) == before


def test_off_passes_everything_through(fl_ctx: FLContext) -> None:
    w = np.linspace(-1, 1, 100, dtype=np.float32)
    shareable = _shareable(DataKind.WEIGHT_DIFF, {"w": w.copy()})
    out = from_shareable(PercentilePrivacy(off=True).process(shareable, fl_ctx))
    assert np.array_equal(out.data["w"], w)
    assert not out.get_filter_history()


def test_logs_nothing(caplog: pytest.LogCaptureFixture, fl_ctx: FLContext) -> None:
    data = _model(np.random.default_rng(19), [np.float32])
    with caplog.at_level(logging.DEBUG):
        PercentilePrivacy().process(_shareable(DataKind.WEIGHT_DIFF, data), fl_ctx)
    assert not [r for r in caplog.records if r.name.startswith("flip_nvflare")]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ({"percentile": -1}, ValueError, "between 0 and 100"),
        ({"percentile": 100.5}, ValueError, "between 0 and 100"),
        ({"percentile": float("nan")}, ValueError, "NaN"),
        ({"percentile": "10"}, TypeError, "percentile must be a number"),
        ({"percentile": True}, TypeError, "percentile must be a number"),
        ({"gamma": 0}, ValueError, "positive finite"),
        ({"gamma": -0.1}, ValueError, "positive finite"),
        ({"gamma": float("inf")}, ValueError, "positive finite"),
        ({"gamma": None}, TypeError, "gamma must be a number"),
        ({"off": "no"}, TypeError, "off must be true or false"),
        ({"in_place": 1}, TypeError, "in_place must be true or false"),
        ({"percentile": 5, "min_percentile": 10}, ValueError, "below the site minimum 10"),
        ({"gamma": 0.1, "max_gamma": 0.01}, ValueError, "above the site maximum 0.01"),
        ({"min_percentile": 10, "off": True}, ValueError, "cannot be switched off"),
        ({"max_gamma": 0.5, "off": True}, ValueError, "cannot be switched off"),
        ({"min_percentile": 101}, ValueError, "min_percentile must be between 0 and 100"),
        ({"max_gamma": 0}, ValueError, "max_gamma must be a positive finite number"),
        ({"data_kinds": [DataKind.METRICS]}, ValueError, "invalid data kinds"),
        ({"data_kinds": "WEIGHTS"}, TypeError, "data_kinds must be a list"),
    ],
)
def test_invalid_arguments_are_refused(args: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        PercentilePrivacy(**args)


def test_stock_silently_shares_everything_with_a_bad_percentile(fl_ctx: FLContext) -> None:
    # why ours refuses bad arguments at construction: stock builds and then does nothing
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(4, np.float32)})
    assert StockPercentilePrivacy(percentile=150).process_dxo(dxo, Shareable(), fl_ctx) is None


def test_site_minimum_accepts_equal_or_stronger_settings() -> None:
    f = PercentilePrivacy(percentile=25, gamma=0.005, min_percentile=10, max_gamma=0.01)
    assert (f.percentile, f.gamma, f.off) == (25, 0.005, False)
    PercentilePrivacy(percentile=10, gamma=0.01, min_percentile=10, max_gamma=0.01)


@pytest.mark.parametrize(("attribute", "value"), [("off", True), ("percentile", 1), ("gamma", 0.5)])
def test_weakening_a_built_site_filter_fails_closed(attribute: str, value: Any, fl_ctx: FLContext) -> None:
    f = PercentilePrivacy(percentile=10, gamma=0.01, min_percentile=10, max_gamma=0.01)
    setattr(f, attribute, value)  # e.g. job code reaching the site's filter object
    shareable = _shareable(DataKind.WEIGHT_DIFF, {"w": np.ones(10, np.float32)})
    with pytest.raises(ValueError, match="site m"):
        f.process(shareable, fl_ctx)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"w": 0.5}, "layer 'w' is builtins.float"),
        ({"w": [0.1, 0.2]}, "layer 'w' is builtins.list"),
        ({"w": np.ones(3, np.complex64)}, "layer 'w' is numpy dtype complex64"),
        ({"w": np.array(["a"])}, "numpy dtype <U1"),
    ],
)
def test_non_numeric_layers_are_refused(data: Layers, words: str, fl_ctx: FLContext) -> None:
    with pytest.raises(TypeError, match=words):
        PercentilePrivacy().process_dxo(DXO(DataKind.WEIGHT_DIFF, data=data), Shareable(), fl_ctx)


@pytest.mark.parametrize("steps", ["3", None, 0, -2, float("nan"), float("inf"), True])
def test_bad_step_count_is_refused(steps: Any, fl_ctx: FLContext) -> None:
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(4, np.float32)}, meta=_meta(steps))
    dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = steps
    with pytest.raises(ValueError, match="NUM_STEPS_CURRENT_ROUND"):
        PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)


# --- the step count -----------------------------------------------------------------------------


def test_stock_lets_the_step_count_loosen_the_clip(fl_ctx: FLContext) -> None:
    # why a site filter bounds the step count: the stock clip bound is gamma * steps
    data = {"w": np.linspace(-1, 1, 1000, dtype=np.float64)}
    assert np.abs(_stock(data, fl_ctx, steps=1e6, gamma=0.01)["w"]).max() == 1.0  # nothing clipped


@pytest.mark.parametrize("steps", [None, 1, 3, 2.5, 1e6, 1e30, np.int64(50), np.float32(8), 0.5, 1e-3, 1e-30])
@pytest.mark.parametrize(
    "minimum", [{"max_gamma": 0.01}, {"min_percentile": 10}, {"min_percentile": 5, "max_gamma": 0.5}]
)
def test_a_site_filter_uses_one_step_whatever_the_job_reports(
    selection: str, steps: Any, minimum: dict[str, Any], fl_ctx: FLContext
) -> None:
    data = _model(np.random.default_rng(21), [np.float32, np.float64], layers=40, scale=0.05)
    expected = _stock(data, fl_ctx, None, percentile=10, gamma=0.01)
    actual = _ours(data, fl_ctx, steps, percentile=10, gamma=0.01, **minimum)
    assert_identical(expected, actual)
    assert max(float(np.abs(v).max()) for v in actual.values()) <= 0.01


@pytest.mark.parametrize("steps", ["3", None, 0, -2, float("nan"), float("inf"), True])
def test_a_site_filter_still_refuses_a_bad_step_count(steps: Any, fl_ctx: FLContext) -> None:
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(4, np.float32)})
    dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = steps
    with pytest.raises(ValueError, match="NUM_STEPS_CURRENT_ROUND"):
        PercentilePrivacy(min_percentile=10, max_gamma=0.01).process_dxo(dxo, Shareable(), fl_ctx)


def test_update_without_values_is_refused(fl_ctx: FLContext) -> None:
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"a": np.zeros(0, np.float32), "b": np.zeros((3, 0))})
    with pytest.raises(ValueError, match="no values"):
        PercentilePrivacy().process_dxo(dxo, Shareable(), fl_ctx)
