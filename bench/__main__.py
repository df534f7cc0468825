"""Run every benchmark (``bench/bench_*.py``), each in a fresh process, and summarise.

Each benchmark module has ``main() -> bool`` that prints its own report and returns whether its
targets were met. Every figure is printed the same way (``bench/_figures.py``): flip-nvflare's
value and its baseline's, each the best of the runs (``FLIP_BENCH_RUNS``, default 3) with the
range of the runs, and the ratio of the two bests against its target.

Usage: ``python -m bench [NAME ...]`` (names without the ``bench_`` prefix select a subset).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _modules(selected: list[str]) -> list[str]:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if selected:
        wanted = {s if s.startswith("bench_") else f"bench_{s}" for s in selected}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    return names


def main(argv: list[str]) -> int:
    """Run the selected benchmarks and return 0 if every target was met."""
    results: list[tuple[str, str, float]] = []
    for name in _modules(argv):
        print(f"\n=== {name} ===", flush=True)
        code = f"import sys; from bench import {name} as m; sys.exit(0 if m.main() else 1)"
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code], check=False)
        outcome = {0: "target met", 1: "target MISSED"}.get(proc.returncode, f"FAILED (exit {proc.returncode})")
        results.append((name, outcome, time.monotonic() - t0))
    print("\n=== summary ===")
    for name, outcome, seconds in results:
        print(f"{name:32s} {outcome:24s} {seconds:6.1f} s")
    return 0 if all(outcome == "target met" for _, outcome, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
