"""PercentilePrivacy (ours) against NVFlare's stock filter on a 25M-parameter, 160-layer update.

Both filters get the same float32 WEIGHT_DIFF (percentile 10, gamma 0.01, 1 local step) and must
return identical output, bit for bit. Measured in this one run:

* wall time: best of a few calls each (with their range), every call on a fresh copy of the update that only the
  DXO references (as a task result is), so ours can work in place;
* peak extra memory: ``tracemalloc`` peak during one call, minus what was traced just before it.
  numpy reports every array buffer it allocates to tracemalloc, so this counts the copies and
  temporaries a filter makes (and the new arrays it returns), not the input it was given. Memory
  runs are separate from timed runs, because tracing slows allocation down.

Target: ours at least 2x faster and at most half the stock filter's peak extra memory.
Ours with ``in_place=False`` (the path for arrays someone else still holds) is reported too.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from bench._figures import figure

PARAMETERS = 25_000_000
LAYERS = 160
REPEATS = 5
SPEED_TARGET = 2.0
MEMORY_TARGET = 0.5
MIB = 1 << 20


def make_update(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """A CNN-like update: 80 weight tensors of very different sizes, each with a small bias."""
    rng = np.random.default_rng(seed)
    biases = rng.integers(16, 1025, size=LAYERS // 2)
    weights = np.exp(rng.uniform(np.log(2_000), np.log(2_000_000), size=LAYERS // 2))
    weights = np.maximum((weights / weights.sum() * (PARAMETERS - biases.sum())).astype(np.int64), 1)
    weights[-1] += PARAMETERS - biases.sum() - weights.sum()
    update: dict[str, np.ndarray[Any, Any]] = {}
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        cols = 64 if w % 64 == 0 else 1
        update[f"block{i}.weight"] = (rng.standard_normal(int(w), dtype=np.float32) * 0.01).reshape(-1, cols)
        update[f"block{i}.bias"] = rng.standard_normal(int(b), dtype=np.float32) * 0.001
    assert len(update) == LAYERS and sum(v.size for v in update.values()) == PARAMETERS
    return update


def _fresh(update: dict[str, np.ndarray[Any, Any]]) -> Any:
    from nvflare.apis.dxo import DXO, DataKind

    return DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in update.items()})


def _timed(make_filter: Callable[[], Any], update: dict[str, np.ndarray[Any, Any]], ctx: Any) -> list[float]:
    from nvflare.apis.shareable import Shareable

    times = []
    for _ in range(REPEATS):
        dxo = _fresh(update)
        f = make_filter()
        start = time.perf_counter()
        f.process_dxo(dxo, Shareable(), ctx)
        times.append(time.perf_counter() - start)
        del dxo
    return times


def _peak_extra(make_filter: Callable[[], Any], update: dict[str, np.ndarray[Any, Any]], ctx: Any) -> tuple[int, Any]:
    from nvflare.apis.shareable import Shareable

    dxo = _fresh(update)
    f = make_filter()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = f.process_dxo(dxo, Shareable(), ctx)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return peak, out.data


def _identical(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return list(a) == list(b) and all(
        type(a[k]) is type(b[k])
        and a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def main() -> bool:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy as Stock

    from flip_nvflare.filters.percentile_privacy import PercentilePrivacy as Ours

    def stock() -> Any:
        return Stock(percentile=10, gamma=0.01)

    def ours() -> Any:
        return Ours(percentile=10, gamma=0.01)

    def ours_copying() -> Any:
        return Ours(percentile=10, gamma=0.01, in_place=False)

    ctx = FLContext()
    update = make_update()
    print(f"percentile privacy: {PARAMETERS:,} float32 parameters in {LAYERS} layers, percentile 10, gamma 0.01")

    stock_mem, stock_out = _peak_extra(stock, update, ctx)
    ours_mem, ours_out = _peak_extra(ours, update, ctx)
    copy_mem, copy_out = _peak_extra(ours_copying, update, ctx)
    same = _identical(stock_out, ours_out) and _identical(stock_out, copy_out)
    del stock_out, ours_out, copy_out

    stock_time = _timed(stock, update, ctx)
    ours_time = _timed(ours, update, ctx)
    copy_time = _timed(ours_copying, update, ctx)

    print("  baseline: NVFlare's stock filter")

    def seconds(value: float) -> str:
        return f"{value:.3f} s"

    def mib(value: float) -> str:
        return f"{value / MIB:.1f} MiB"

    met = figure("time (ours, in place)", stock_time, ours_time, seconds, 1 / SPEED_TARGET)
    met &= figure("peak extra memory (in place)", [stock_mem], [ours_mem], mib, MEMORY_TARGET)
    figure("time (ours, copying)", stock_time, copy_time, seconds)
    figure("peak extra memory (copying)", [stock_mem], [copy_mem], mib)
    print(f"  output identical to stock, bit for bit: {'yes' if same else 'NO'}")
    met = same and met
    print(
        f"  target (>= {SPEED_TARGET:g}x faster, <= {MEMORY_TARGET:g}x memory, identical): {'met' if met else 'MISSED'}"
    )
    return met


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
