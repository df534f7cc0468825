"""GaussianPrivacy on a 100M-parameter float32 update, beside the floor measured in the same run.

The floor is the least any Gaussian-mechanism filter must do: compute the update's norm
(``numpy.linalg.norm`` per layer), draw the same amount of Gaussian noise with NumPy's default
generator (``default_rng().standard_normal(n, dtype=float32)``) and add it. The filter does that
and more: it checks every value is finite (folded into the norm pass), clips, scales the noise,
keeps the privacy ledger (``dp-accounting`` composes epsilon after the release) and, in place,
allocates only small block buffers.

Measured in this one run, each timing the best of 3 (the range is shown; floor and filter calls
alternate, so that both see the same machine load), every call on a fresh copy of the update that
only the DXO references (as a task result is):

* wall time of the filter's ``process`` on a WEIGHT_DIFF task result, against the floor;
* peak extra memory: ``tracemalloc`` peak during one call, minus what was traced before it (numpy
  reports its buffers to tracemalloc); the floor allocates a noise array as big as the update.

Target: the filter within 1.3x of the floor's time, and the memory in use while it runs (the
update plus the filter's extra) under 2x the update.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

PARAMETERS = 100_000_000
LAYERS = 100
REPEATS = 3
SPEED_TARGET = 1.3
MEMORY_TARGET = 2.0
MIB = 1 << 20
Update = dict[str, np.ndarray[Any, Any]]


def make_update(seed: int = 0) -> Update:
    """100 float32 layers of very different sizes, 100M values in all."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(10_000), np.log(10_000_000), size=LAYERS))
    sizes = np.maximum((sizes / sizes.sum() * PARAMETERS).astype(np.int64), 1)
    sizes[-1] += PARAMETERS - sizes.sum()
    update = {f"layer{i}.weight": (rng.standard_normal(int(n), dtype=np.float32) * 0.01) for i, n in enumerate(sizes)}
    assert sum(v.size for v in update.values()) == PARAMETERS
    return update


def floor(data: Update) -> None:
    """The floor: the norm, the same amount of Gaussian noise from NumPy's default generator, added."""
    rng = np.random.default_rng()
    for layer in data.values():
        np.linalg.norm(layer)
        layer += rng.standard_normal(layer.size, dtype=np.float32).reshape(layer.shape)


def make_filter_call() -> Callable[[Update], None]:
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.filter import FilterChainType, FilterContextKey
    from nvflare.apis.fl_context import FLContext

    from flip_nvflare.filters.gaussian_privacy import GaussianPrivacy

    def call(data: Update) -> None:
        f = GaussianPrivacy(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
        f.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_RESULT_CHAIN)
        shareable = DXO(DataKind.WEIGHT_DIFF, data=data).to_shareable()
        f.process(shareable, FLContext())

    return call


def _fresh(template: Update) -> Update:
    return {k: v.copy() for k, v in template.items()}


def _timed(works: list[Callable[[Update], None]], template: Update) -> list[list[float]]:
    """Times of each work, best of ``REPEATS``; the works alternate, so that both see the same machine load."""
    times: list[list[float]] = [[] for _ in works]
    for _ in range(REPEATS):
        for i, work in enumerate(works):
            data = _fresh(template)
            gc.collect()
            start = time.perf_counter()
            work(data)
            times[i].append(time.perf_counter() - start)
            del data
    return times


def _peak_extra(work: Callable[[Update], None], template: Update) -> int:
    data = _fresh(template)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        work(data)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def main() -> bool:
    """Run the benchmark, print the report, and return whether the target was met."""
    template = make_update()
    size = sum(v.nbytes for v in template.values())
    call = make_filter_call()
    call(_fresh(template))  # warm up: imports, dp-accounting's first composition
    print(f"gaussian privacy: {PARAMETERS:,} float32 parameters in {LAYERS} layers ({size / MIB:.0f} MiB)")
    floor_times, ours_times = _timed([floor, call], template)
    floor_mem = _peak_extra(floor, template)
    ours_mem = _peak_extra(call, template)
    best_floor, best_ours = min(floor_times), min(ours_times)
    ratio = best_ours / best_floor
    in_use = (size + ours_mem) / size
    print(
        f"  floor (norm + default_rng noise + add): {best_floor:6.3f} s best of {REPEATS} "
        f"(range {min(floor_times):.3f}-{max(floor_times):.3f}), peak extra {floor_mem / MIB:7.1f} MiB"
    )
    print(
        f"  GaussianPrivacy.process             : {best_ours:6.3f} s best of {REPEATS} "
        f"(range {min(ours_times):.3f}-{max(ours_times):.3f}), peak extra {ours_mem / MIB:7.1f} MiB"
    )
    print(f"  -> {ratio:.2f}x the floor's time; memory in use while filtering {in_use:.3f}x the update")
    met = ratio <= SPEED_TARGET and in_use < MEMORY_TARGET
    verdict = "met" if met else "MISSED"
    print(f"  target (<= {SPEED_TARGET:g}x the floor, < {MEMORY_TARGET:g}x the update's memory): {verdict}")
    return met


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
