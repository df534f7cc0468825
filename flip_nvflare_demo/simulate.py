"""Run a job in NVFlare's simulator in a child process, with its output in a log file.

``python -m flip_nvflare_demo.simulate JOB WORKSPACE -n 2 -t 2`` runs NVFlare's
``SimulatorRunner`` (the Python API, so no deprecation warning) and exits with its return code.
:func:`run_simulation` starts that child in its own process group, so a timeout or an interrupt
stops the simulator and every client process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The job id NVFlare's simulator always uses.
SIMULATOR_JOB_ID = "simulate_job"


@dataclass(frozen=True)
class SimulationResult:
    """How a simulator run ended.

    Attributes:
        return_code: The simulator's exit code (0: success); -1 if it timed out.
        seconds: Wall time of the run.
        workspace: The simulator workspace.
        log_path: The simulator's output.
    """

    return_code: int
    seconds: float
    workspace: Path
    log_path: Path

    @property
    def ok(self) -> bool:
        """Whether the simulator reported success."""
        return self.return_code == 0

    @property
    def server_run_dir(self) -> Path:
        """The server's run folder (``app_server``, ``flip_dev``, ``flip_results``...)."""
        return self.workspace / "server" / SIMULATOR_JOB_ID

    def log_tail(self, lines: int = 40) -> str:
        """The end of the simulator's output."""
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def run_simulation(
    job_dir: str | Path,
    workspace: str | Path,
    *,
    n_clients: int = 2,
    threads: int = 2,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    timeout: float = 900.0,
    on_poll: Callable[[], None] | None = None,
    poll_interval: float = 0.5,
) -> SimulationResult:
    """Run ``job_dir`` in the simulator in a child process and wait for it.

    Args:
        job_dir: The job folder.
        workspace: The simulator workspace (created; reused if it exists).
        n_clients: Number of clients (``site-1`` ... ``site-N``).
        threads: Clients run at once.
        env: Extra environment variables for the simulator (e.g. prod settings).
        log_path: Where the simulator's output goes (default ``<workspace>.log`` beside the
            workspace: the simulator empties its workspace when it starts).
        timeout: Seconds before the run is stopped.
        on_poll: Called every ``poll_interval`` seconds while the run goes on (e.g. to show progress).
        poll_interval: Seconds between polls.
    """
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path is not None else workspace.with_name(workspace.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "flip_nvflare_demo.simulate",
        str(Path(job_dir).resolve()),
        str(workspace),
        "-n",
        str(n_clients),
        "-t",
        str(threads),
    ]
    child_env = {**os.environ, **dict(env or {})}
    start = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
        )
    try:
        while process.poll() is None:
            if time.monotonic() - start > timeout:
                _stop(process)
                return SimulationResult(-1, time.monotonic() - start, workspace, log)
            if on_poll is not None:
                on_poll()
            time.sleep(poll_interval)
        if on_poll is not None:
            on_poll()
        return SimulationResult(process.returncode, time.monotonic() - start, workspace, log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the simulator and every process of its group (clients included)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no client of its group is left either.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        _wait_for_group_exit(process.pid, timeout=10.0)
        return


def _wait_for_group_exit(group: int, timeout: float) -> None:
    """Wait until no live (non-zombie) process of ``group`` is left, as far as ``/proc`` shows."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for entry in proc.glob("[0-9]*"):
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator on a job (the child process of :func:`run_simulation`)."""
    parser = argparse.ArgumentParser(prog="python -m flip_nvflare_demo.simulate")
    parser.add_argument("job")
    parser.add_argument("workspace")
    parser.add_argument("-n", "--n-clients", type=int, default=2)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    runner = SimulatorRunner(
        job_folder=args.job, workspace=args.workspace, n_clients=args.n_clients, threads=args.threads
    )
    return int(runner.run() or 0)


if __name__ == "__main__":
    sys.exit(main())
