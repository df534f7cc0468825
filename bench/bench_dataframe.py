"""Benchmark: ``FLIPStandardProd.get_dataframe`` on a 1,000,000-row x 10-column cohort.

A stdlib HTTP server (its own process, on 127.0.0.1) answers ``POST /cohort/dataframe`` with a
prebuilt column-oriented JSON body (82 MiB), serialised as the data-access-api's FastAPI does
(compact separators, UTF-8). Its columns: accession ids (unique strings), person ids and ages
(ints), BMI (one-decimal floats), study dates (strings), modality (a category), contrast (bool),
HbA1c (ints with 15% nulls), a risk score (full-precision floats), ethnicity (a category with
nulls). Variants:

* ``baseline``: the naive client: ``httpx`` then ``pandas.DataFrame(data=json.loads(body))``;
* ``flip``: ``FLIPStandardProd(...).get_dataframe(project_id, query)`` (its HTTP layer, then
  :func:`flip_nvflare.core.frames.dataframe_from_columns_json`);
* ``fetch``: the HTTP transfer alone (for scale only: the part both variants share).

How it is measured: every run of a variant is its own fresh Python process, which imports
everything first and then times one call (wall clock, from the request to the frame; both
variants make their HTTP client inside the call, as ``get_dataframe``'s first call does). The
"decode" column is the part after the body has arrived; "cpu" is the process's user + system
time over the call, which the other work on the machine disturbs less than wall time. Peak
memory is the process's peak resident set during the call minus its resident set just before:
the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` right before the
call (falling back to ``ru_maxrss`` where that is not allowed). Resident memory, not
tracemalloc, because tracemalloc sees only allocations routed through Python's allocator hooks
(not, for instance, the buffers of pandas' C parser, or memory the allocator keeps after a
free) and slows allocation-heavy code enough to distort the timing. The variants alternate,
``RUNS`` runs each, and the median of each figure is reported. Each run also fingerprints its
frame (``pandas.util.hash_pandas_object`` and the dtypes) after the measurement; baseline and
flip must agree, so the speed-up is never bought with a different result.

Target: the ``flip`` variant under 0.6x the baseline in both wall time and peak memory.

Environment: ``FLIP_BENCH_ROWS`` (default 1,000,000) and ``FLIP_BENCH_RUNS`` (default 5).
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TARGET = 0.6
ROOT = Path(__file__).resolve().parent.parent
PROJECT_ID = "bench-encrypted-project-id"
QUERY = "SELECT * FROM omop.person"
TRUST_KEY = "bench-trust-key"


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
    return json.dumps(columns, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- server process


def serve(body_path: str) -> None:
    """Serve the body at ``body_path`` on POST /cohort/dataframe until stdin closes."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = Path(body_path).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/cohort/dataframe":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # the parent closes stdin (or dies) to stop the server
    server.shutdown()


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


def measure(variant: str, url: str) -> None:
    """Run one variant once in this (fresh) process and print its figures as one JSON line."""
    import httpx
    import pandas as pd

    from flip_nvflare.core import frames
    from flip_nvflare.core.prod import FLIPStandardProd

    decoding = [0.0]  # seconds spent decoding (after the body has arrived)

    def fetch() -> bytes:
        # A new client per call, as FLIPStandardProd's first call makes one (TLS context and all).
        with httpx.Client(timeout=300) as client:
            response = client.post(
                url.rstrip("/") + "/cohort/dataframe",
                json={"encrypted_project_id": PROJECT_ID, "query": QUERY},
                headers={"X-Trust-Internal-Service-Key": TRUST_KEY},
            )
            response.raise_for_status()
            return response.content

    if variant == "fetch":

        def run() -> pd.DataFrame:
            body = fetch()
            return pd.DataFrame({"bytes": [len(body)]})

    elif variant == "baseline":

        def run() -> pd.DataFrame:
            body = fetch()
            t0 = time.perf_counter()
            frame = pd.DataFrame(data=json.loads(body))
            decoding[0] += time.perf_counter() - t0
            return frame

    elif variant == "flip":
        flip = FLIPStandardProd(data_access_api_url=url, trust_key=TRUST_KEY, http_timeout=300, env={})
        decode = frames.dataframe_from_columns_json

        def timed_decode(body: bytes) -> pd.DataFrame:
            t0 = time.perf_counter()
            try:
                return decode(body)
            finally:
                decoding[0] += time.perf_counter() - t0

        # get_dataframe imports the decoder from the module when called: time that part too.
        frames.dataframe_from_columns_json = timed_decode  # type: ignore[assignment]

        def run() -> pd.DataFrame:
            return flip.get_dataframe(PROJECT_ID, QUERY)

    else:
        raise SystemExit(f"unknown variant {variant!r}")

    gc.collect()
    reset = _reset_peak()
    before = _rss_bytes()
    c0 = time.process_time()
    t0 = time.perf_counter()
    frame = run()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = _peak_bytes(reset) - before
    hashed = pd.util.hash_pandas_object(frame, index=False)
    fingerprint = f"{int(hashed.sum()) & 0xFFFFFFFFFFFF:x}:" + ",".join(str(t) for t in frame.dtypes)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "decode": decoding[0],
                "cpu": cpu,
                "peak": peak,
                "shape": list(frame.shape),
                "fingerprint": fingerprint,
            }
        )
    )


# --------------------------------------------------------------------------- driver


def _run_variant(variant: str, url: str) -> dict[str, Any]:
    code = f"from bench.bench_dataframe import measure; measure({variant!r}, {url!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> bool:
    """Run the benchmark, print a short report, and return whether both ratios are under 0.6."""
    rows = int(os.environ.get("FLIP_BENCH_ROWS", "1000000"))
    runs = int(os.environ.get("FLIP_BENCH_RUNS", "5"))
    with tempfile.TemporaryDirectory(prefix="flip-bench-") as tmp:
        body_path = Path(tmp) / "cohort.json"
        body_path.write_bytes(build_body(rows))
        size = body_path.stat().st_size
        server = subprocess.Popen(
            [sys.executable, "-c", f"from bench.bench_dataframe import serve; serve({str(body_path)!r})"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            url = f"http://127.0.0.1:{port}"
            results: dict[str, list[dict[str, Any]]] = {"baseline": [], "flip": [], "fetch": []}
            for _ in range(runs):
                for variant in results:
                    results[variant].append(_run_variant(variant, url))
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    fingerprints = {r["fingerprint"] for v in ("baseline", "flip") for r in results[v]}
    seconds = {v: statistics.median(r["seconds"] for r in rs) for v, rs in results.items()}
    cpu = {v: statistics.median(r["cpu"] for r in rs) for v, rs in results.items()}
    decode = {v: statistics.median(r["decode"] for r in rs) for v, rs in results.items()}
    peak = {v: statistics.median(r["peak"] for r in rs) for v, rs in results.items()}
    time_ratio = seconds["flip"] / seconds["baseline"]
    memory_ratio = peak["flip"] / peak["baseline"]
    shape = results["flip"][0]["shape"]

    mib = 1024 * 1024
    print(f"cohort: {shape[0]:,} rows x {shape[1]} columns, body {size / mib:.1f} MiB; median of {runs} runs")
    print(f"{'variant':10s} {'wall (s)':>9s} {'decode (s)':>11s} {'cpu (s)':>8s} {'peak (MiB)':>11s}")
    for variant in ("baseline", "flip"):
        print(
            f"{variant:10s} {seconds[variant]:9.2f} {decode[variant]:11.2f} {cpu[variant]:8.2f}"
            f" {peak[variant] / mib:11.0f}"
        )
    print(
        f"{'ratio':10s} {time_ratio:8.2f}x {decode['flip'] / decode['baseline']:10.2f}x"
        f" {cpu['flip'] / cpu['baseline']:7.2f}x {memory_ratio:10.2f}x   (target < {TARGET:.2f}x for wall and peak)"
    )
    print(
        f"(for scale: the HTTP fetch alone, no decoding: {seconds['fetch']:.2f} s wall, "
        f"{peak['fetch'] / mib:.0f} MiB peak)"
    )
    same = len(fingerprints) == 1
    if not same:
        print("MISMATCH: the variants returned different frames")
    return same and time_ratio < TARGET and memory_ratio < TARGET


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
