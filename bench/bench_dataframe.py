"""Benchmark: decoding the cohort answer (``get_dataframe``) at 200,000 and 1,000,000 rows x 12 columns.

The body is a column-oriented JSON object serialised as the data-access-api's FastAPI does
(compact separators, UTF-8): accession ids (unique strings), person ids and ages (ints), BMI
(one-decimal floats), study dates (strings), modality (a category), contrast (bool), HbA1c (ints
with 15% nulls), a risk score (full-precision floats), ethnicity (a category with nulls), weight
(two-decimal floats) and a DICOM series UID (unique 45-character strings): about 28 MB at
200,000 rows and 140 MB at 1,000,000. Variants, on the same bytes:

* ``baseline``: exactly the plain decode, ``pandas.DataFrame(json.loads(body))``;
* ``flip``: what ``FLIPStandardProd.get_dataframe`` runs on the answer's bytes,
  :func:`flip_nvflare.core.frames.dataframe_from_columns_json`.

How it is measured: every run of a variant is its own fresh Python process, which imports
everything, reads the body from a file into ``bytes`` (as the HTTP client hands it over), then
times the decode alone. Peak memory is the process's peak resident set during the decode minus
its resident set just before, plus the body's size: the body is resident throughout in both
variants (the HTTP client holds it), so it counts in both. The kernel's high-water mark (VmHWM) is
reset through ``/proc/self/clear_refs`` right before the decode (``ru_maxrss`` where that is not
allowed). Resident memory, not tracemalloc: tracemalloc misses what C code (pandas' parser, Arrow,
numpy) allocates outside Python's hooks, and memory the allocator keeps after a free. Each run
also fingerprints its frame (``pandas.util.hash_pandas_object`` and the dtypes) after the
measurement; baseline and flip must agree, so a speed-up is never bought with a different frame.

Not measured here: the transfer. ``get_dataframe``'s HTTP client reads the answer into one buffer
(bounded by ``max_cohort_bytes``) before decoding; the decode does not start while the body streams.

Targets: ``flip`` at most 0.5x the baseline's time and 0.5x its peak memory, at both sizes (best
of ``FLIP_BENCH_RUNS`` runs each, default 3, alternating).

Environment: ``FLIP_BENCH_ROWS`` (comma-separated sizes, default ``200000,1000000``),
``FLIP_BENCH_RUNS`` (default 3).
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._figures import figure

TARGET = 0.5
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def build_body(rows: int, seed: int = 2024) -> bytes:
    """A realistic cohort answer: ids, ints, floats, dates, categories, a bool and nullable columns."""
    import numpy as np

    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    columns["accession_id"] = [f"ACC{i:09d}" for i in (rng.permutation(rows) + 10_000_000).tolist()]
    columns["person_id"] = rng.integers(1_000_000, 99_999_999, rows).tolist()
    columns["age"] = rng.integers(18, 96, rows).tolist()
    columns["bmi"] = np.round(rng.normal(27.0, 5.0, rows), 1).tolist()
    days = rng.integers(0, 15 * 365, rows).astype("timedelta64[D]")
    columns["study_date"] = np.datetime_as_string(np.datetime64("2010-01-01") + days).tolist()
    modalities = np.array(["CT", "MR", "CR", "US", "DX", "PT", "MG"], dtype=object)
    columns["modality"] = modalities[rng.integers(0, modalities.size, rows)].tolist()
    columns["contrast"] = (rng.random(rows) < 0.3).tolist()
    hba1c = rng.integers(20, 120, rows).astype(object)
    hba1c[rng.random(rows) < 0.15] = None
    columns["hba1c"] = hba1c.tolist()
    columns["risk_score"] = rng.random(rows).tolist()
    ethnicity = np.array(["White", "Asian", "Black", "Mixed", "Other", None], dtype=object)
    columns["ethnicity"] = ethnicity[rng.integers(0, ethnicity.size, rows)].tolist()
    columns["weight_kg"] = np.round(rng.normal(80.0, 15.0, rows), 2).tolist()
    uids = rng.integers(10**18, 10**19, rows, dtype=np.uint64).tolist()
    columns["series_uid"] = [f"1.2.826.0.1.3680043.8.498.{uid}" for uid in uids]
    return json.dumps(columns, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- measured process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            match = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        if match:
            return int(match.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(variant: str, body_path: str) -> None:
    """Decode the body once in this (fresh) process with ``variant``; print its figures as one JSON line."""
    import pandas as pd

    from flip_nvflare.core.frames import dataframe_from_columns_json

    def baseline(body: bytes) -> pd.DataFrame:
        return pd.DataFrame(json.loads(body))

    decode = {"baseline": baseline, "flip": dataframe_from_columns_json}[variant]
    decode(b'{"a":[1,2.5,null],"s":["x","y",null],"b":[true,false,true]}')  # imports and first calls
    body = Path(body_path).read_bytes()
    gc.collect()
    reset = _reset_peak()
    before = _rss_bytes()
    t0 = time.perf_counter()
    frame = decode(body)
    seconds = time.perf_counter() - t0
    peak = _peak_bytes(reset) - before + len(body)
    hashed = pd.util.hash_pandas_object(frame, index=False)
    fingerprint = f"{int(hashed.sum()) & 0xFFFFFFFFFFFF:x}:" + ",".join(str(t) for t in frame.dtypes)
    print(json.dumps({"seconds": seconds, "peak": peak, "shape": list(frame.shape), "fingerprint": fingerprint}))


# --------------------------------------------------------------------------- driver


def _run(variant: str, body_path: Path) -> dict[str, Any]:
    code = f"from bench.bench_dataframe import measure; measure({variant!r}, {str(body_path)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> bool:
    """Run both variants at each size, print the figures, and return whether every target is met."""
    sizes = [int(n) for n in os.environ.get("FLIP_BENCH_ROWS", "200000,1000000").split(",")]
    runs = int(os.environ.get("FLIP_BENCH_RUNS", "3"))
    met = True
    with tempfile.TemporaryDirectory(prefix="flip-bench-") as tmp:
        for rows in sizes:
            body_path = Path(tmp) / f"cohort-{rows}.json"
            body_path.write_bytes(build_body(rows))
            results: dict[str, list[dict[str, Any]]] = {"baseline": [], "flip": []}
            for _ in range(runs):
                for variant in results:
                    results[variant].append(_run(variant, body_path))
            fingerprints = {r["fingerprint"] for rs in results.values() for r in rs}
            shape = results["flip"][0]["shape"]
            same = "identical" if len(fingerprints) == 1 else "DIFFER"
            dtypes = next(iter(fingerprints)).split(":")[1]
            print(
                f"cohort {shape[0]:,} rows x {shape[1]} columns, body {body_path.stat().st_size / MIB:.1f} MiB; "
                f"frames and dtypes {same} ({dtypes})"
            )
            if len(fingerprints) != 1:
                print("MISMATCH: the variants returned different frames")
                met = False

            def values(variant: str, name: str, rs: dict[str, list[dict[str, Any]]] = results) -> list[float]:
                return [float(r[name]) for r in rs[variant]]

            met &= figure("decode time", values("baseline", "seconds"), values("flip", "seconds"), _s, TARGET)
            met &= figure(
                "peak memory (incl. the body)", values("baseline", "peak"), values("flip", "peak"), _mib, TARGET
            )
    return met


def _s(value: float) -> str:
    return f"{value:.3f} s"


def _mib(value: float) -> str:
    return f"{value / MIB:.0f} MiB"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
