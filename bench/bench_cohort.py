"""Benchmark: bringing a cohort's images to a trust, prepared (bounded concurrency) vs one at a time.

The FLIP emulator runs in its own process (``flip_emulator.handle.start_emulator``) and
serves image downloads concurrently (no per-trust limit) with 50 ms of latency per non-cached
download, like a PACS/XNAT fetch. 100 accessions of its synthetic population are fetched with
``FLIPStandardProd.get_by_accession_number``:

* ``baseline``: one accession after the other, as a FLIP app's own loop does;
* ``prepared``: what CohortPreparer runs: :class:`~flip_nvflare.executors.downloads.ImageFetcher`
  with the default concurrency (4), each accession claimed on the net first
  (:class:`~flip_nvflare.executors.claims.ImageClaims`).

Between runs the emulator forgets its downloads (images deleted), so every run pays the latency.
The variants alternate, ``RUNS`` runs each, after a short warm-up; the best (shortest) wall time
of each is compared, since on a shared 2-core machine other processes only ever add time. Every
run must end with all 100 folders present. ``prepared_x2`` (twice the default concurrency) is
reported for information.

Target: ``prepared`` at the default concurrency at least 3x faster than ``baseline``. With 4
requests in flight the ceiling is 4x; what is lost goes to the emulator's own per-request work
(one Python process) and the client's HTTP handling, both of which grow under machine load.

Environment: ``FLIP_BENCH_RUNS`` (default 3), ``FLIP_BENCH_LATENCY`` (seconds, default 0.05).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._figures import figure

TARGET = 3.0
ACCESSIONS = 100
QUERY = "SELECT accession_id FROM omop.image_occurrence"


def main() -> bool:
    """Run the benchmark, print its report, and return whether the target was met."""
    from flip_emulator.handle import start_emulator
    from flip_nvflare.executors.claims import CLAIMS_DIR, ImageClaims, make_claim_token
    from flip_nvflare.executors.cohort import DEFAULT_CONCURRENCY
    from flip_nvflare.executors.downloads import ImageFetcher

    runs = int(os.environ.get("FLIP_BENCH_RUNS", "3"))
    latency = float(os.environ.get("FLIP_BENCH_LATENCY", "0.05"))
    variants = {"baseline": 1, "prepared": DEFAULT_CONCURRENCY, "prepared_x2": DEFAULT_CONCURRENCY * 2}
    with (
        tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp,
        start_emulator(Path(tmp) / "emulator", s3=False, download_concurrency=0, download_latency=latency) as emulator,
    ):
        backend = emulator.prod_backend()
        project = emulator.encrypted_project_id
        accessions = sorted(backend.get_dataframe(project, QUERY)["accession_id"])[:ACCESSIONS]
        if len(accessions) < ACCESSIONS:
            raise SystemExit(f"the synthetic population has only {len(accessions)} studies")
        net = emulator.images_dir / emulator.net_id

        def fetch(accession: str) -> Path:
            return backend.get_by_accession_number(project, accession, "NIFTI")

        def baseline() -> None:
            for accession in accessions:
                fetch(accession)

        def prepared(concurrency: int) -> None:
            claims = ImageClaims(net, make_claim_token("bench", "site-1"))

            def claim_and_fetch(accession: str) -> Path:
                claims.claim(accession)
                return fetch(accession)

            report = ImageFetcher(claim_and_fetch, concurrency=concurrency).run(accessions)
            if report.missing:
                raise SystemExit(f"prepared run left {report.missing} accessions missing: {report.reasons()}")

        def timed(variant: str) -> float:
            emulator.reset(images=True)
            shutil.rmtree(net / CLAIMS_DIR, ignore_errors=True)
            t0 = time.perf_counter()
            if variant == "baseline":
                baseline()
            else:
                prepared(variants[variant])
            seconds = time.perf_counter() - t0
            present = sum(1 for a in accessions if (net / a).is_dir())
            if present != len(accessions):
                raise SystemExit(f"{variant}: only {present} of {len(accessions)} folders present")
            return seconds

        for accession in accessions[:5]:  # warm-up: connections, imports, emulator caches
            fetch(accession)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name in variants:
                times[name].append(timed(name))

    print(
        f"{ACCESSIONS} accessions, {latency * 1000:.0f} ms imaging latency, emulator serving concurrently; "
        "baseline: one accession after the other"
    )

    def seconds(value: float) -> str:
        return f"{value:.2f} s"

    met = figure(f"time, concurrency {DEFAULT_CONCURRENCY}", times["baseline"], times["prepared"], seconds, 1 / TARGET)
    figure(f"time, concurrency {DEFAULT_CONCURRENCY * 2}", times["baseline"], times["prepared_x2"], seconds)
    return met
