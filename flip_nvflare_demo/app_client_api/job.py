"""The demo's Client API job, written as FLIP's tutorials write theirs (``python job.py`` runs it in the simulator).

The app's code is this folder's scripts plus the executor-style demo's ``models.py``,
``data_utils.py`` and ``config.json`` (one model and one data loader for both styles). Dev data
comes from ``DEV_DATAFRAME`` / ``DEV_IMAGES_DIR`` (``flip-nvflare demo --style client_api`` sets
them); ``--export --export-dir DIR`` writes the job instead of running it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nvflare.recipe import SimEnv

from flip_nvflare.recipes import FlipEvalRecipe, FlipFedAvgRecipe

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent / "app"


def _defaults(options: dict[str, Any], dev_data: Path | None) -> None:
    """The demo's project, query and (with dev data) per-site data paths, unless ``options`` name them."""
    if dev_data is not None:
        options.setdefault("dev_dataframe", f"{Path(dev_data).resolve()}/{{SITE_NAME}}/cohort.csv")
        options.setdefault("dev_images_dir", f"{Path(dev_data).resolve()}/{{SITE_NAME}}/images")
    options.setdefault("project_id", "demo-project")
    options.setdefault("query", "SELECT accession_id, label FROM cohort")


def build(
    num_rounds: int, min_clients: int, execution_mode: str = "in_process", dev_data: Path | None = None, **options: Any
) -> FlipFedAvgRecipe:
    """The demo's FedAvg recipe with the app files staged into every site's custom/ folder.

    Args:
        num_rounds: Federated rounds.
        min_clients: Sites taking part.
        execution_mode: ``"in_process"`` or ``"external_process"``.
        dev_data: A demo dev-data folder (one sub-folder per site); else ``DEV_DATAFRAME`` / ``DEV_IMAGES_DIR``.
        **options: More FlipFedAvgRecipe arguments (``flip_mode``, ``model_id``, ``query``...).
    """
    _defaults(options, dev_data)
    recipe = FlipFedAvgRecipe(
        num_rounds=num_rounds,
        min_clients=min_clients,
        train_script="trainer.py",
        train_args="--project_id {project_id}",
        best_model_metric="val_accuracy" if num_rounds > 1 else None,
        execution_mode=execution_mode,
        **options,
    )
    for source in (HERE / "trainer.py", SHARED / "models.py", SHARED / "data_utils.py", SHARED / "config.json"):
        recipe.job.add_file_to_clients(str(source))
    recipe.job.add_file_to_server(str(SHARED / "models.py"))
    return recipe


def build_evaluation(
    min_clients: int, checkpoints: Path, dev_data: Path | None = None, **options: Any
) -> FlipEvalRecipe:
    """The demo's evaluation recipe: the checkpoints named in config.json's ``models``, scored at every site.

    Args:
        min_clients: Sites taking part.
        checkpoints: The server folder holding the checkpoints (never sent to the sites as files).
        dev_data: A demo dev-data folder (one sub-folder per site); else ``DEV_DATAFRAME`` / ``DEV_IMAGES_DIR``.
        **options: More FlipEvalRecipe arguments (``flip_mode``, ``model_id``, ``query``...).
    """
    _defaults(options, dev_data)
    recipe = FlipEvalRecipe(
        min_clients=min_clients,
        eval_script="evaluator.py",
        eval_args="--project_id {project_id}",
        checkpoint_dir=str(Path(checkpoints).resolve()),
        **options,
    )
    for source in (HERE / "evaluator.py", SHARED / "models.py", SHARED / "data_utils.py", SHARED / "config.json"):
        recipe.job.add_file_to_clients(str(source))
    recipe.job.add_file_to_server(str(SHARED / "config.json"))
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description="flip-nvflare demo: the Client API job")
    parser.add_argument("--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--workspace", type=str, default="/tmp/nvflare/flip_demo_client_api")
    parser.add_argument("--execution_mode", choices=["in_process", "external_process"], default="in_process")
    args = parser.parse_args()
    recipe = build(args.num_rounds, args.n_clients, args.execution_mode)
    run = recipe.execute(SimEnv(num_clients=args.n_clients, num_threads=args.n_clients, workspace_root=args.workspace))
    print(f"Job status: {run.get_status()}")
    print(f"Job results: {run.get_result()}")


if __name__ == "__main__":
    main()
