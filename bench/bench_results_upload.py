"""Benchmark: a 300 MB run folder zipped and uploaded to S3 (moto's server over loopback).

The run folder holds what a training run leaves: two model files of random bytes (weights do not
compress), a cross-site JSON and a training log (both compress well). Variants, each run in its
own fresh Python process (so memory is measured cleanly) against the same moto server:

* ``baseline``: the plain approach: ``zipfile`` with DEFLATE level 6 to a temporary file, then
  boto3's ``upload_file`` (its managed, multipart transfer);
* ``flip``: :func:`flip_nvflare.core.results.upload_folder_zip`: weights stored, text deflated,
  the zip streamed into a multipart upload while it is written (no temporary file).

Measured per run: wall time from the start of zipping to the object being complete; extra disk
(peak bytes under the process's temporary folder, sampled every 10 ms; the variants get an empty
one each); peak extra memory (the process's peak resident set during the call minus its resident
set before, the kernel's high-water mark reset through ``/proc/self/clear_refs``). After each run
(not timed) the object is downloaded and every member compared with its source file byte for byte,
and the object deleted.

Targets: flip's time <= 0.4x and extra disk <= 0.1x the baseline's (best of ``RUNS`` each);
memory is reported against its own bound (<= 64 MiB extra).

Environment: ``FLIP_BENCH_RUNS`` (default 3), ``FLIP_BENCH_RESULTS_MB`` (default 300).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from bench._figures import figure

ROOT = Path(__file__).resolve().parent.parent
TIME_TARGET = 0.4
DISK_TARGET = 0.1
MEMORY_BOUND = 64 * 1024 * 1024
BUCKET = "bench-results"
MIB = 1024 * 1024


def make_run_folder(folder: Path, total_mb: int) -> None:
    """A run folder of about ``total_mb`` MB: random weights (~93%), a JSON and a log (compressible)."""
    import numpy as np

    rng = np.random.default_rng(14)
    models = folder / "models"
    models.mkdir(parents=True)
    weights = int(total_mb * MIB * 0.93) // 2
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        with open(models / name, "wb") as out:
            left = weights
            while left:
                chunk = min(left, 16 * MIB)
                out.write(rng.bytes(chunk))
                left -= chunk
    scale = max(1, total_mb // 30)  # the text files make up the other ~7%
    cross_site = {
        f"site-{s}": {f"model_{m}": {"acc": float(rng.random()), "auc": float(rng.random())} for m in range(1000)}
        for s in range(10 * scale)
    }
    (folder / "cross_site_val.json").write_text(json.dumps(cross_site, indent=2))
    lines = [f"round {r} step {s} loss {rng.random():.6f} lr 0.001\n" for r in range(10 * scale) for s in range(2000)]
    (folder / "train.log").write_text("".join(lines))


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    )


# --------------------------------------------------------------------------- measured process


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            match = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        if match:
            return int(match.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _disk_usage(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def measure(variant: str, folder: str, endpoint: str, key: str) -> None:
    """Run one variant once in this (fresh) process; print its figures as one JSON line."""
    import logging

    from boto3.s3.transfer import TransferConfig

    from flip_nvflare.core.results import upload_folder_zip

    logging.disable(logging.INFO)
    source = Path(folder)
    scratch = Path(tempfile.gettempdir())  # the parent gives each run an empty TMPDIR
    s3 = _s3(endpoint)
    s3.head_bucket(Bucket=BUCKET)  # connections and credentials ready before timing

    def baseline() -> None:
        fd, name = tempfile.mkstemp(suffix=".zip")
        os.close(fd)
        try:
            with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
                for path in sorted(p for p in source.rglob("*") if p.is_file()):
                    zf.write(path, path.relative_to(source).as_posix())
            s3.upload_file(name, BUCKET, key, Config=TransferConfig())
        finally:
            os.unlink(name)

    def flip() -> None:
        upload_folder_zip(s3, source, BUCKET, key)

    run = {"baseline": baseline, "flip": flip}[variant]
    peak_disk = [0]
    stop = threading.Event()

    def sample_disk() -> None:
        while not stop.wait(0.01):
            peak_disk[0] = max(peak_disk[0], _disk_usage(scratch))

    sampler = threading.Thread(target=sample_disk, daemon=True)
    sampler.start()
    reset = _reset_peak()
    before = _rss()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    memory = _peak(reset) - before
    stop.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "disk": peak_disk[0], "memory": memory}))


# --------------------------------------------------------------------------- driver


def _digest(stream: Any) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(MIB):
        h.update(chunk)
    return h.hexdigest()


def _verify(s3: Any, key: str, folder: Path, scratch: Path) -> int:
    """Download the object, compare every member with its source file; return the zip's size."""
    path = scratch / "back.zip"
    s3.download_file(BUCKET, key, str(path))
    expected = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    with zipfile.ZipFile(path) as zf:
        if sorted(zf.namelist()) != sorted(expected):
            raise SystemExit(f"{key}: members differ from the run folder")
        for name, source in expected.items():
            with zf.open(name) as member, open(source, "rb") as original:
                if _digest(member) != _digest(original):
                    raise SystemExit(f"{key}: member {name} differs from its source")
    size = path.stat().st_size
    path.unlink()
    s3.delete_object(Bucket=BUCKET, Key=key)
    return size


def _run(variant: str, folder: Path, endpoint: str, key: str, scratch: Path) -> dict[str, Any]:
    tmp = scratch / f"tmp-{variant}"
    tmp.mkdir()
    call = f"measure({variant!r}, {str(folder)!r}, {endpoint!r}, {key!r})"
    code = f"from bench.bench_results_upload import measure; {call}"
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    tmp.rmdir()
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> bool:
    """Run both variants ``RUNS`` times (alternating), verify every upload, print the figures."""
    from flip_emulator.handle import start_emulator

    runs = int(os.environ.get("FLIP_BENCH_RUNS", "3"))
    total_mb = int(os.environ.get("FLIP_BENCH_RESULTS_MB", "300"))
    with tempfile.TemporaryDirectory(prefix="flip-bench-upload-") as tmp:
        scratch = Path(tmp)
        folder = scratch / "run"
        make_run_folder(folder, total_mb)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        with start_emulator(scratch / "emulator") as emulator:
            assert emulator.s3_endpoint is not None
            s3 = _s3(emulator.s3_endpoint)
            s3.create_bucket(Bucket=BUCKET)
            results: dict[str, list[dict[str, Any]]] = {"baseline": [], "flip": []}
            zip_sizes: dict[str, int] = {}
            for n in range(runs):
                for variant in results:
                    key = f"{variant}/{n}.zip"
                    results[variant].append(_run(variant, folder, emulator.s3_endpoint, key, scratch))
                    zip_sizes[variant] = _verify(s3, key, folder, scratch)

    print(
        f"run folder {size / MIB:.0f} MiB (2 random-weight models, JSON, log) -> moto S3 over loopback; "
        f"zip {zip_sizes['baseline'] / MIB:.0f} MiB (baseline), {zip_sizes['flip'] / MIB:.0f} MiB (flip); "
        "every upload read back and compared member by member"
    )

    def values(variant: str, name: str) -> list[float]:
        return [float(r[name]) for r in results[variant]]

    met = figure("time", values("baseline", "seconds"), values("flip", "seconds"), lambda v: f"{v:.2f} s", TIME_TARGET)
    disk_base, disk_flip = values("baseline", "disk"), values("flip", "disk")
    met &= figure("extra disk (peak temp bytes)", disk_base, disk_flip, lambda v: f"{v / MIB:.0f} MiB", DISK_TARGET)
    memory_base, memory_flip = values("baseline", "memory"), values("flip", "memory")
    figure("extra memory (peak RSS)", memory_base, memory_flip, lambda v: f"{v / MIB:.0f} MiB")
    bounded = max(values("flip", "memory")) <= MEMORY_BOUND
    print(f"  flip-nvflare extra memory, worst run: {max(values('flip', 'memory')) / MIB:.0f} MiB (bound 64 MiB)")
    return met and bounded


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
