"""``flip-nvflare demo --prod``: the demo job in prod mode against the FLIP services emulator and moto S3.

The emulator (hub, trust and S3, in a child process on free loopback ports) serves the demo's own
data (see :mod:`flip_nvflare_demo.population`); the job's configs are filled in as FLIP's hub fills
them (a registered model id, the project's encrypted id, the cohort query); the simulator runs
with the prod settings in its environment; the report comes from what the emulated hub recorded
and the zip in its S3 bucket. Everything started is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import time
from pathlib import Path

from flip_nvflare.constants import FlipMode

TRUSTS = ("Trust_1", "Trust_2")


def run_prod_demo(workdir: Path, *, timeout: float = 600.0) -> int:
    """Run the prod-mode demo; return the exit code."""
    from flip_emulator.handle import start_emulator
    from flip_nvflare_demo.cli import DEMO_MODEL_ID, SITES, StatusPrinter, finish, prepare_run
    from flip_nvflare_demo.data import generate_demo_data
    from flip_nvflare_demo.population import DEMO_QUERY, write_population
    from flip_nvflare_demo.report import from_emulator, render, with_plot
    from flip_nvflare_demo.simulate import run_simulation

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    population = write_population(generate_demo_data(workdir / "data"), workdir / "emulator-population")
    print(f"Starting the FLIP services emulator with moto S3 ({population.studies} demo studies)...")
    with start_emulator(
        workdir / "emulator",
        s3=True,
        synthetic_dir=population.root,
        models={DEMO_MODEL_ID: TRUSTS},
        extra_args=population.emulator_args(),
    ) as emulator:
        print(f"  hub {emulator.hub_url}, trust {emulator.trust_url}, S3 {emulator.s3_endpoint} ({emulator.bucket})")
        project_id = emulator.encrypted_project_id
        job_dir, workspace = prepare_run(
            workdir, FlipMode.PROD, model_id=DEMO_MODEL_ID, project_id=project_id, query=DEMO_QUERY
        )
        progress = StatusPrinter(lambda: emulator.records(DEMO_MODEL_ID).status_names(), started)
        print(f"Running the simulator ({SITES} sites, both served by the one emulated trust); its log: {workspace}.log")
        result = run_simulation(
            job_dir,
            workspace,
            n_clients=SITES,
            threads=SITES,
            env=emulator.env(),
            timeout=timeout,
            on_poll=progress,
        )
        record = from_emulator(emulator, DEMO_MODEL_ID)
        seconds = time.monotonic() - started
        print(f"\nWhat the hub received: flip-nvflare emulate --show {DEMO_MODEL_ID} --data-dir {emulator.data_dir}")
    return finish(record, result.return_code, result.log_tail(), seconds, with_plot(render, workdir))
