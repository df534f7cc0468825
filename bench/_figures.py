"""How every benchmark reports a figure: best of the runs, their range, the baseline beside it, the ratio.

On a shared machine other processes only ever add time (or memory), so the best run of each side
is the figure and the ratio is best over best; the range (min-max) of the runs shows the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def figure(
    name: str,
    baseline: Sequence[float],
    flip: Sequence[float],
    fmt: Callable[[float], str],
    target: float | None = None,
    *,
    lower_is_better: bool = True,
) -> bool:
    """Print one figure: flip-nvflare and its baseline (best of the runs and the range) and the ratio.

    Args:
        name: What is measured (e.g. ``time``).
        baseline: The baseline's value in each run.
        flip: flip-nvflare's value in each run.
        fmt: Formats one value (with its unit).
        target: The ratio flip / baseline must be at most this (``lower_is_better``) or at
            least this; ``None``: reported for information only.
        lower_is_better: Whether smaller values are better (time, memory) or larger (throughput).

    Returns:
        Whether the target is met (True without a target).
    """
    best_base = min(baseline) if lower_is_better else max(baseline)
    best_flip = min(flip) if lower_is_better else max(flip)
    ratio = best_flip / best_base if best_base else float("inf") if best_flip else 0.0
    met = target is None or (ratio <= target if lower_is_better else ratio >= target)
    wanted = "" if target is None else f" (target {'<=' if lower_is_better else '>='} {target:g}x)"
    word = "best" if len(flip) > 1 else "value"
    print(
        f"  {name:28s} flip-nvflare {fmt(best_flip)} [{fmt(min(flip))}-{fmt(max(flip))}]   "
        f"baseline {fmt(best_base)} [{fmt(min(baseline))}-{fmt(max(baseline))}]   "
        f"ratio {ratio:.3f}x{wanted}{'' if met else '  MISSED'}   ({word} of {len(flip)})",
        flush=True,
    )
    return met
