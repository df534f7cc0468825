"""FlipEvalRecipe: FLIP's evaluation job for a Client API evaluation script.

The server loads the models to evaluate from checkpoints (``CheckpointModelLocator``, the
evaluation template's), NVFlare's ``CrossSiteModelEval`` sends each model to each site as one
``FLModel`` (the script's ``flare.is_evaluate()`` branch), and the EvaluationReporter sends every
site's metrics to the hub. Sites check their cohort first (``init_task``) and clean up last
(``post_task``), as in the executor-style evaluation job.
"""

from __future__ import annotations

from typing import Any

from flip_nvflare.constants import JobType
from flip_nvflare.recipes.base import (
    _HUB_WIDGETS,
    EXCHANGE_FORMATS,
    TRANSFER_TYPES,
    FlipRecipe,
    _choice,
    _non_negative,
    _script,
    _task_name,
    _text,
    preparer_args,
)
from flip_nvflare.recipes.spec import AppSpec, Component, Executor


class FlipEvalRecipe(FlipRecipe):
    """FLIP's evaluation recipe for Client API scripts.

    Args:
        min_clients: Sites that must take part.
        eval_script: The evaluation script (``"evaluator.py"`` means ``custom/evaluator.py``).
        eval_args: The script's arguments (``{project_id}`` resolved as for training).
        model_id: The model's hub id for runs that know it.
        validation_timeout: Seconds to wait for a site's evaluation of one model.
        heart_beat_timeout: External-process scripts: seconds without a heartbeat before the
            script counts as dead.
        project_id: The project's encrypted id (client config).
        query: The cohort query (client config).
        evaluate_task_name: The evaluation task's name.
        params_exchange_format: ``"numpy"`` (default), ``"pytorch"`` or ``"raw"``.
        params_transfer_type: ``"FULL"`` or ``"DIFF"`` (NVFlare's; an evaluation sends metrics only).
        checkpoint_dir: Where the server finds the checkpoints (default: the app's ``custom/``
            folder, as the executor-style evaluation job). The app's ``config.json`` ``models``
            names them; without it, ``model.pt`` is evaluated as the model ``"model"`` (FLIP's convention).
        flip_mode: ``"dev"`` or ``"prod"`` (see :class:`~flip_nvflare.recipes.base.FlipRecipe`).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: image folders (else ``DEV_IMAGES_DIR``).
        execution_mode: ``"in_process"`` or ``"external_process"``.
        gpus: GPUs each site must have free.
        gpu_mem: GiB each of those GPUs must have free.
    """

    job_type = JobType.EVALUATION
    job_name = "flip_evaluation"

    def __init__(
        self,
        *,
        min_clients: int = 1,
        eval_script: str = "evaluator.py",
        eval_args: str = "--project_id {project_id}",
        model_id: str | None = None,
        validation_timeout: float = 12000,
        heart_beat_timeout: float = 600,
        project_id: str = "",
        query: str = "SELECT * FROM Table;",
        evaluate_task_name: str = "validate",
        params_exchange_format: str = "numpy",
        params_transfer_type: str = "FULL",
        checkpoint_dir: str = "",
        flip_mode: str | None = None,
        dev_dataframe: str | None = None,
        dev_images_dir: str | None = None,
        execution_mode: str = "in_process",
        gpus: int | None = None,
        gpu_mem: float | None = None,
    ) -> None:
        self.eval_script = _script("eval_script", eval_script)
        self.eval_args = _text("eval_args", eval_args)
        self.validation_timeout = _non_negative("validation_timeout", validation_timeout)
        self.evaluate_task_name = _task_name("evaluate_task_name", evaluate_task_name)
        self.params_exchange_format = _choice("params_exchange_format", params_exchange_format, EXCHANGE_FORMATS)
        self.params_transfer_type = _choice("params_transfer_type", params_transfer_type, TRANSFER_TYPES)
        self.checkpoint_dir = _text("checkpoint_dir", checkpoint_dir)
        super().__init__(
            min_clients=min_clients,
            model_id=model_id,
            project_id=project_id,
            query=query,
            flip_mode=flip_mode,
            dev_dataframe=dev_dataframe,
            dev_images_dir=dev_images_dir,
            execution_mode=execution_mode,
            heart_beat_timeout=heart_beat_timeout,
            gpus=gpus,
            gpu_mem=gpu_mem,
        )

    def apps(self) -> tuple[AppSpec, AppSpec]:
        """The evaluation server app and the Client API client app."""
        sites = {"participating_clients": "{participating_clients}"}
        server = AppSpec(
            params=self._server_params(1),
            components=[
                self._backend(server=True),
                Component(
                    "model_locator",
                    "flip_nvflare.locators.CheckpointModelLocator",
                    {"checkpoint_dir": self.checkpoint_dir, "default_checkpoint": "model.pt"},
                ),
                *(c for c in _HUB_WIDGETS if c.id != "progress_reporter"),
                Component("evaluation_json_generator", "flip_nvflare.components.EvaluationJsonGenerator"),
                Component("evaluation_reporter", "flip_nvflare.components.EvaluationReporter"),
                Component("results_uploader", "flip_nvflare.components.ResultsUploader"),
            ],
            workflows=[
                Component(
                    "init_evaluation",
                    "flip_nvflare.controllers.InitEvaluation",
                    {"min_clients": "{min_clients}", **sites},
                ),
                Component(
                    "evaluation",
                    "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                    {
                        "model_locator_id": "model_locator",
                        "submit_model_task_name": "",
                        "validation_task_name": self.evaluate_task_name,
                        "validation_timeout": self.validation_timeout,
                        **sites,
                    },
                ),
                Component("cleanup", "flip_nvflare.controllers.CleanupClients", {"task_name": "post_task", **sites}),
            ],
        )
        runner: dict[str, Any] = {
            "evaluate_task_name": self.evaluate_task_name,
            "params_exchange_format": self.params_exchange_format,
            "params_transfer_type": self.params_transfer_type,
        }
        client = AppSpec(
            params=self._client_params(),
            components=self._client_components(),
            executors=[
                Executor(["init_task"], "flip_nvflare.executors.CohortPreparer", preparer_args()),
                Executor(
                    [self.evaluate_task_name],
                    "flip_nvflare.executors.ClientApiRunner",
                    self._script_executor_args(self.eval_script, self.eval_args, runner),
                ),
                Executor(["post_task"], "flip_nvflare.executors.ImageCleanup"),
            ],
        )
        return server, client
