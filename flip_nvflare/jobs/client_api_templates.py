"""The Client API job templates, exported from the recipes (one source of truth).

``flip_standard_client_api``, ``flip_evaluation_client_api`` and ``flip_fed_opt_client_api`` are
what :class:`~flip_nvflare.recipes.FlipFedAvgRecipe`, :class:`~flip_nvflare.recipes.FlipEvalRecipe`
and :class:`~flip_nvflare.recipes.FlipFedOptRecipe` export with the settings below, written in
NVFlare's template layout (``info.conf``, ``meta.conf``, ``config_fed_server.json``,
``config_fed_client.json``). ``python -m flip_nvflare.jobs.client_api_templates`` rewrites them
after a recipe changes; a test checks that they match.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.identity import CUSTOM_PROPS, VERSION_PROP
from flip_nvflare.jobs.templates import template_name

#: What each template describes (its ``info.conf``).
DESCRIPTIONS: dict[JobType, str] = {
    JobType.STANDARD: (
        "FLIP standard training for a Client API script: FedAvg (ScatterAndGather over weight differences), "
        "cross-site validation and FLIP hub reporting"
    ),
    JobType.EVALUATION: (
        "FLIP evaluation for a Client API script: each checkpoint named in the app's config.json is sent to every "
        "client and evaluated, with FLIP hub reporting"
    ),
    JobType.FED_OPT: (
        "FLIP FedOpt training for a Client API script: a server optimizer applies the averaged weight difference, "
        "with cross-site validation and FLIP hub reporting"
    ),
}

#: The recipe settings the templates are exported with (the executor-style templates' defaults).
TEMPLATE_SETTINGS: dict[str, Any] = {"min_clients": 2, "flip_mode": "dev", "project_id": "dev-project"}


def _recipe(job_type: JobType) -> Any:
    from flip_nvflare.recipes import FlipEvalRecipe, FlipFedAvgRecipe, FlipFedOptRecipe

    query = "SELECT accession_id FROM omop.image_occurrence"
    if job_type is JobType.EVALUATION:
        return FlipEvalRecipe(**TEMPLATE_SETTINGS, query=query)
    cls = FlipFedOptRecipe if job_type is JobType.FED_OPT else FlipFedAvgRecipe
    return cls(**TEMPLATE_SETTINGS, query=query, num_rounds=3)


def render(job_type: JobType) -> dict[str, str]:
    """The files of the Client API template of ``job_type`` (file name -> text), exported from its recipe."""
    recipe = _recipe(job_type)
    with tempfile.TemporaryDirectory() as tmp:
        recipe.export(tmp)
        job = Path(tmp) / recipe.job.name
        meta = json.loads((job / "meta.json").read_text(encoding="utf-8"))
        server = (job / "app" / "config" / "config_fed_server.json").read_text(encoding="utf-8")
        client = (job / "app" / "config" / "config_fed_client.json").read_text(encoding="utf-8")
    props = {k: v for k, v in meta.get(CUSTOM_PROPS, {}).items() if k != VERSION_PROP}  # job create writes the version
    meta_conf: dict[str, Any] = {
        "name": template_name(job_type, "client_api"),
        "resource_spec": meta.get("resource_spec", {}),
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": meta["min_clients"],
        "mandatory_clients": [],
    }
    if props:
        meta_conf[CUSTOM_PROPS] = props
    info = {"description": DESCRIPTIONS[job_type], "execution_api_type": "client_api", "controller_type": "server"}
    return {
        "info.conf": json.dumps(info, indent=2) + "\n",
        "meta.conf": json.dumps(meta_conf, indent=2) + "\n",
        "config_fed_server.json": _normalised(server),
        "config_fed_client.json": _normalised(client),
    }


def _normalised(text: str) -> str:
    return json.dumps(json.loads(text), indent=2) + "\n"


def write_all(root: Path) -> list[Path]:
    """Write every Client API template under ``root``; return the folders written."""
    written = []
    for job_type in JobType:
        folder = root / template_name(job_type, "client_api")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in render(job_type).items():
            (folder / name).write_text(text, encoding="utf-8")
        written.append(folder)
    return written


if __name__ == "__main__":
    from flip_nvflare.jobs.templates import templates_root

    for path in write_all(templates_root()):
        print(f"wrote {path}", file=sys.stderr)
