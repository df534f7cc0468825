"""The privacy/utility figure: the bundled demo trained without DP and at three epsilons (dev mode).

Each run is the demo's own job (``flip-nvflare demo``: 2 sites, the flip_standard template, the
BlobFinder 3-D CNN) with :class:`~flip_nvflare.filters.GaussianPrivacy` added on the clients'
``train`` task (task data and task result chains), calibrated by ``dp-accounting`` to a target
epsilon over the job's planned rounds, with a fixed dev-mode seed. Accuracy per round is the
``val_accuracy`` each site reports for the global model it receives (the mean of the sites), and
after the last round the cross-site validation of the final global model.

Usage (about a minute per run on 2 cores)::

    python -m bench.privacy_utility [--rounds 6] [--clip-norm 1.0] [--epsilons 1000 100 10]
                                    [--out docs/privacy_utility.png]

Not a ``bench_*`` module: ``make bench`` does not run it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

DEFAULT_EPSILONS = (1000.0, 100.0, 10.0)
DELTA = 1e-5
SEED = 20261205


def _edit_job(job_dir: Path, rounds: int, dp_args: dict[str, Any] | None) -> None:
    server_path = job_dir / "app" / "config" / "config_fed_server.json"
    server = json.loads(server_path.read_text())
    server["global_rounds"] = rounds
    server_path.write_text(json.dumps(server, indent=2))
    if dp_args is None:
        return
    client_path = job_dir / "app" / "config" / "config_fed_client.json"
    client = json.loads(client_path.read_text())
    dp_filter = {"path": "flip_nvflare.filters.GaussianPrivacy", "args": dp_args}
    for chain in client["task_result_filters"]:
        if "train" in chain["tasks"]:
            chain["filters"].append(dp_filter)  # after the template's PercentilePrivacy: DP is the last word
            break
    else:
        client["task_result_filters"].append({"tasks": ["train"], "filters": [dp_filter]})
    client["task_data_filters"].append({"tasks": ["train"], "filters": [dp_filter]})
    client_path.write_text(json.dumps(client, indent=2))


def _accuracy_per_round(server_run: Path) -> tuple[dict[int, float], float | None]:
    by_round: dict[int, list[float]] = defaultdict(list)
    metrics = server_run / "flip_dev" / "metrics.jsonl"
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record["label"] == "val_accuracy":
            by_round[int(record["global_round"])].append(float(record["result"]))
    final = None
    zips = sorted((server_run / "flip_dev" / "results").rglob("*.zip"))
    if zips:
        with zipfile.ZipFile(zips[-1]) as zf:
            if "cross_val_results.json" in zf.namelist():
                cross = json.loads(zf.read("cross_val_results.json"))
                final_model = "SRV_FL_global_model.pt"  # the last global model (not the best one)
                values = [
                    float(models[final_model]["val_accuracy"])
                    for models in cross.values()
                    if "val_accuracy" in models.get(final_model, {})
                ]
                final = statistics.mean(values) if values else None
    return {r: statistics.mean(v) for r, v in sorted(by_round.items())}, final


def run_one(workdir: Path, rounds: int, epsilon: float | None, clip_norm: float) -> dict[str, Any]:
    """One demo run; returns the accuracy per round and the DP settings applied."""
    from flip_nvflare.constants import FlipMode
    from flip_nvflare.filters.accounting import calibrate_noise_multiplier
    from flip_nvflare_demo.cli import prepare_run
    from flip_nvflare_demo.simulate import run_simulation

    dp_args = None
    if epsilon is not None:
        dp_args = {"target_epsilon": epsilon, "delta": DELTA, "clip_norm": clip_norm, "seed": SEED}
    job_dir, workspace = prepare_run(workdir, FlipMode.DEV)
    _edit_job(job_dir, rounds, dp_args)
    started = time.monotonic()
    result = run_simulation(job_dir, workspace, n_clients=2, threads=2, timeout=1800)
    seconds = time.monotonic() - started
    if result.return_code != 0:
        raise SystemExit(f"the run at epsilon {epsilon} failed:\n{result.log_tail()}")
    per_round, final = _accuracy_per_round(result.server_run_dir)
    z = calibrate_noise_multiplier(epsilon, DELTA, rounds) if epsilon is not None else None
    return {"epsilon": epsilon, "noise_multiplier": z, "per_round": per_round, "final": final, "seconds": seconds}


def plot(runs: list[dict[str, Any]], rounds: int, clip_norm: float, out: Path, command: str) -> None:
    """Accuracy per round, one line per setting, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for run in runs:
        xs = list(run["per_round"])
        ys = [run["per_round"][x] for x in xs]
        if run["final"] is not None:
            xs.append(rounds)
            ys.append(run["final"])
        if run["epsilon"] is None:
            name = "no DP"
        else:
            name = f"ε = {run['epsilon']:g} (noise multiplier {run['noise_multiplier']:.3g})"
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("global model after N rounds (0 = initial model)")
    ax.set_ylabel("validation accuracy (mean of 2 sites)")
    ax.set_ylim(0.3, 1.02)
    ax.set_xticks(range(rounds + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(
        f"flip-nvflare demo, GaussianPrivacy: δ = {DELTA:g}, clip norm {clip_norm:g}, {rounds} rounds", fontsize=9
    )
    fig.text(0.01, 0.005, command, fontsize=6, family="monospace", alpha=0.7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the demo at each setting, print the table and save the figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.privacy_utility", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--epsilons", type=float, nargs=3, default=list(DEFAULT_EPSILONS))
    parser.add_argument("--out", type=Path, default=Path("docs/privacy_utility.png"))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.privacy_utility " + " ".join(argv if argv is not None else sys.argv[1:])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="flip-privacy-utility-"))
    runs = []
    for epsilon in [None, *args.epsilons]:
        name = "no-dp" if epsilon is None else f"eps-{epsilon:g}"
        print(f"run {name} ...", flush=True)
        runs.append(run_one(root / name, args.rounds, epsilon, args.clip_norm))
        done = runs[-1]
        shown = " ".join(f"{acc:.3f}" for acc in done["per_round"].values())
        print(f"  accuracy per round: {shown}; final {done['final']}; {done['seconds']:.0f} s", flush=True)
    plot(runs, args.rounds, args.clip_norm, args.out, command.strip())
    (args.out.with_suffix(".json")).write_text(json.dumps({"command": command.strip(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
