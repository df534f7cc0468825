"""Benchmark: what each site costs the server, for the same dev job at 2, 8 and 32 sites in the simulator.

The job is ``flip_standard`` made by ``job create --dev-data`` from a trivial app
(``bench/sites_app``: the trainer reads the prepared cohort, reports two metrics and returns a
constant weight difference), so a site costs what flip-nvflare and NVFlare cost and nothing else.
``min_clients`` and the participating sites come from the data's site folders, so every site
trains every round. Each size runs once in NVFlare's simulator with one client process per site
(``-n N -t N``), 3 rounds, and a ResourceProbe server component (``sites_app/resource_probe.py``)
records the server process's CPU time and memory at TRAINING_STARTED, each ROUND_DONE and END_RUN.

Reported per size, over the training rounds (TRAINING_STARTED to the last ROUND_DONE; a
site-round is one site's part in one round, N x 3 of them):

* wall time per site-round;
* the server process's CPU time per site-round (user + system, every thread of the process; the
  simulator's own per-client threads live there too);
* the server process's peak RSS (``VmHWM`` at END_RUN), and its RSS at START_RUN (the simulator
  has by then built its per-client objects in that process);
* the train metrics delivered to the dev ledger, against N x 3 x 2 expected.

Targets: the server's peak RSS grows by at most 5 MB per added site (the least-squares slope of
peak RSS over the sweep's sizes; the slope of each step is printed too, but a step of a few sites
moves by a few MB from run to run), its CPU per site-round at 32 sites is within 20 % of that at 8
sites, and every metric arrived. Figures, not assertions: on a shared 2-core machine other
processes only ever add time.

Where the memory goes (tracemalloc of the server process, 2 and 8 sites): flip-nvflare's own
server-side allocations grow by about 2 kB per site; NVFlare's message streaming keeps a chunk
buffer per stream in flight (about 1.6 MB per site); the rest is native (threads, allocator).

Environment: ``FLIP_BENCH_SITES`` (default ``2,8,32``), ``FLIP_BENCH_ROUNDS`` (default 3).
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

SWEEP = (2, 8, 32)
ROUNDS = 3
RSS_MB_PER_SITE = 5.0
CPU_FLATNESS = 0.20


@dataclass(frozen=True)
class SweepPoint:
    sites: int
    rounds: int
    simulator_seconds: float
    training_seconds: float
    server_cpu_seconds: float
    start_rss_mb: float
    peak_rss_mb: float
    metrics_delivered: int
    metrics_expected: int

    @property
    def site_rounds(self) -> int:
        return self.sites * self.rounds

    @property
    def wall_ms_per_site_round(self) -> float:
        return 1000 * self.training_seconds / self.site_rounds

    @property
    def cpu_ms_per_site_round(self) -> float:
        return 1000 * self.server_cpu_seconds / self.site_rounds


def rss_slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of peak RSS (MB) over the number of sites."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def run_point(root: Path, sites: int, rounds: int) -> SweepPoint:
    from bench.sites_job import TRAIN_LABELS, ledger_metrics, make_sites_job, missing_train_metrics
    from flip_nvflare_demo.simulate import run_simulation

    probe = root / "probe.jsonl"
    job = make_sites_job(root, sites, rounds, probe=probe)
    if job.min_clients != sites:
        raise SystemExit(f"job create set min_clients {job.min_clients} for {sites} sites")
    result = run_simulation(job.job_dir, root / "workspace", n_clients=sites, threads=sites, timeout=300 + 30 * sites)
    if not result.ok:
        raise SystemExit(f"{sites} sites: simulator exited with {result.return_code}:\n{result.log_tail()}")
    observations = [json.loads(line) for line in probe.read_text().splitlines() if line.strip()]
    start_run = next(o for o in observations if o["kind"] == "start_run")
    started = next(o for o in observations if o["kind"] == "training_started")
    rounds_done = [o for o in observations if o["kind"] == "round_done"]
    end = next(o for o in observations if o["kind"] == "end_run")
    if len(rounds_done) != rounds:
        raise SystemExit(f"{sites} sites: {len(rounds_done)} rounds done, expected {rounds}")
    last = rounds_done[-1]
    records = [r for r in ledger_metrics(result.server_run_dir) if r.get("label") in TRAIN_LABELS]
    missing = missing_train_metrics(records, job.sites, rounds)
    expected = sites * rounds * len(TRAIN_LABELS)
    return SweepPoint(
        sites=sites,
        rounds=rounds,
        simulator_seconds=result.seconds,
        training_seconds=last["t"] - started["t"],
        server_cpu_seconds=last["cpu"] - started["cpu"],
        start_rss_mb=start_run["rss_kb"] / 1024,
        peak_rss_mb=max(o["peak_rss_kb"] for o in (*observations, end)) / 1024,
        metrics_delivered=expected - len(missing),
        metrics_expected=expected,
    )


def main() -> bool:
    """Run the sweep, print its report, and return whether the targets were met."""
    sweep = tuple(int(s) for s in os.environ.get("FLIP_BENCH_SITES", ",".join(map(str, SWEEP))).split(","))
    rounds = int(os.environ.get("FLIP_BENCH_ROUNDS", str(ROUNDS)))
    points: dict[int, SweepPoint] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sites_") as tmp:
        for sites in sweep:
            points[sites] = run_point(Path(tmp) / f"sites-{sites}", sites, rounds)
            print(f"  {sites} sites done in {points[sites].simulator_seconds:.0f} s", flush=True)
    return report(points, rounds)


def report(points: dict[int, SweepPoint], rounds: int) -> bool:
    """Print the sweep's figures and return whether the targets were met."""
    print(f"Dev job (trivial trainer), {rounds} rounds, one simulator client process per site; server process figures")
    header = (
        f"  {'sites':>5}  {'simulator':>9}  {'training':>8}  {'wall/site-round':>15}  "
        f"{'server CPU/site-round':>21}  {'RSS at START_RUN':>16}  {'server peak RSS':>15}  {'metrics delivered':>17}"
    )
    print(header)
    for p in points.values():
        print(
            f"  {p.sites:>5}  {p.simulator_seconds:>8.0f}s  {p.training_seconds:>7.1f}s  "
            f"{p.wall_ms_per_site_round:>13.0f}ms  {p.cpu_ms_per_site_round:>19.1f}ms  "
            f"{p.start_rss_mb:>13.0f} MB  {p.peak_rss_mb:>12.0f} MB  {p.metrics_delivered:>8}/{p.metrics_expected}"
        )
    delivered = all(p.metrics_delivered == p.metrics_expected for p in points.values())
    print(f"  every train metric reached the ledger: {'yes' if delivered else 'NO'}")
    ok = delivered
    ordered = sorted(points)
    for low, high in itertools.pairwise(ordered):
        per_site = (points[high].peak_rss_mb - points[low].peak_rss_mb) / (high - low)
        print(f"  server peak RSS {low} -> {high} sites: {per_site:+.2f} MB per added site")
    if len(ordered) >= 2:
        slope = rss_slope([(n, points[n].peak_rss_mb) for n in ordered])
        met = slope <= RSS_MB_PER_SITE
        ok = ok and met
        print(
            f"  server peak RSS growth over {ordered[0]}..{ordered[-1]} sites (least squares): {slope:+.2f} MB per "
            f"added site (target <= {RSS_MB_PER_SITE:.0f}): {'met' if met else 'MISSED'}"
        )
    if 8 in points and 32 in points:
        ratio = points[32].cpu_ms_per_site_round / points[8].cpu_ms_per_site_round
        met = ratio <= 1 + CPU_FLATNESS
        ok = ok and met
        print(
            f"  server CPU per site-round 32 vs 8 sites: x{ratio:.2f} "
            f"(target within {CPU_FLATNESS:.0%}, i.e. <= x{1 + CPU_FLATNESS:.2f}): {'met' if met else 'MISSED'}"
        )
    else:
        print("  CPU flatness target needs 8 and 32 sites in the sweep: not evaluated")
    return ok
