"""FlipFedAvgRecipe: FLIP's standard job (FedAvg) for a Client API training script.

The server app is the ``flip_standard`` template's (ScatterAndGather over ``WEIGHT_DIFF``
updates, cross-site validation of the global model, every hub widget, the results upload); the
client app runs the script with NVFlare's Client API through
:class:`~flip_nvflare.executors.client_api.ClientApiRunner`, after the site has checked its cohort
(``init_training``) and before the job's downloads are cleaned up (``post_validation``).

The script sends its update as ``FLModel(params=<local minus global>, params_type="DIFF")`` (as
FLIP's tutorials do) or full weights with ``params_transfer_type="DIFF"``; metrics go through
``SummaryWriter.add_scalar`` or ``flare.log`` and reach the hub with the trust's name.
"""

from __future__ import annotations

import re
from typing import Any

from flip_nvflare.constants import JobType
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.recipes.base import (
    _HUB_WIDGETS,
    EXCHANGE_FORMATS,
    TRANSFER_TYPES,
    FlipRecipe,
    PercentilePrivacy,
    _choice,
    _non_negative,
    _positive_int,
    _script,
    _task_name,
    _text,
    preparer_args,
)
from flip_nvflare.recipes.spec import AppSpec, Component, Executor, Filter


class FlipFedAvgRecipe(FlipRecipe):
    """FLIP's FedAvg recipe for Client API scripts (the arguments FLIP's ``FlipFedAvgRecipe`` takes, plus ours).

    Args:
        num_rounds: Federated rounds.
        min_clients: Sites that must take part.
        train_script: The training script; ``"trainer.py"`` means ``custom/trainer.py`` (stage it
            with ``recipe.job.add_file_to_clients(path)``).
        train_args: The script's arguments; ``{project_id}`` becomes the client config's
            ``project_id``. NVFlare splits them at spaces: pass the query through ``query``.
        model_id: The model's hub id for runs that know it (see :class:`FlipRecipe`).
        percentile_privacy: The percentile privacy filter on training results.
        heart_beat_timeout: External-process scripts: seconds without a heartbeat before the
            script counts as dead (ignored in process, as NVFlare has no heartbeat there).
        validation_timeout: Seconds the cross-site validation waits for a site's result.
        wait_time_after_min_received: Seconds a round waits for more results once ``min_clients`` answered.
        project_id: The project's encrypted id (client config).
        query: The cohort query (client config).
        local_rounds: Client config ``local_rounds`` (the script reads it; FLIP's convention).
        train_task_name: The training task's name.
        submit_model_task_name: Non-empty: sites also submit their local models for the cross-site
            matrix. Empty (default): only the global model is validated.
        evaluate_task_name: The validation task's name.
        params_exchange_format: ``"numpy"`` (default), ``"pytorch"`` or ``"raw"``.
        params_transfer_type: ``"FULL"`` or ``"DIFF"``: what NVFlare sends back when the script sends
            full weights.
        aggregate_only_regex: Non-empty: only parameters whose names match are sent and
            aggregated (the rest stay at their initial values); the filter runs before privacy.
        best_model_metric: A metric the script returns for the global model it received; the
            best round's global model is kept beside the final one. Needs ``num_rounds > 1``.
        best_model_metric_minimize: Lower is better for ``best_model_metric``.
        flip_mode: ``"dev"`` or ``"prod"`` (see :class:`FlipRecipe`).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: image folders (else ``DEV_IMAGES_DIR``).
        execution_mode: ``"in_process"`` or ``"external_process"``.
        gpus: GPUs each site must have free (``meta.json`` ``resource_spec``).
        gpu_mem: GiB each of those GPUs must have free.
    """

    job_type = JobType.STANDARD
    job_name = "flip_fedavg"

    def __init__(
        self,
        *,
        num_rounds: int = 3,
        min_clients: int = 1,
        train_script: str = "trainer.py",
        train_args: str = "--project_id {project_id}",
        model_id: str | None = None,
        percentile_privacy: PercentilePrivacy | None = None,
        heart_beat_timeout: float = 600,
        validation_timeout: float = 12000,
        wait_time_after_min_received: float = 10,
        project_id: str = "",
        query: str = "SELECT * FROM Table;",
        local_rounds: int = 1,
        train_task_name: str = "train",
        submit_model_task_name: str = "",
        evaluate_task_name: str = "validate",
        params_exchange_format: str = "numpy",
        params_transfer_type: str = "FULL",
        aggregate_only_regex: str = "",
        best_model_metric: str | None = None,
        best_model_metric_minimize: bool = False,
        flip_mode: str | None = None,
        dev_dataframe: str | None = None,
        dev_images_dir: str | None = None,
        execution_mode: str = "in_process",
        gpus: int | None = None,
        gpu_mem: float | None = None,
    ) -> None:
        self.num_rounds = _positive_int("num_rounds", num_rounds)
        self.train_script = _script("train_script", train_script)
        self.train_args = _text("train_args", train_args)
        self.percentile_privacy = percentile_privacy if percentile_privacy is not None else PercentilePrivacy()
        if not isinstance(self.percentile_privacy, PercentilePrivacy):
            raise FlipConfigError("percentile_privacy must be a flip_nvflare.recipes.PercentilePrivacy.")
        self.validation_timeout = _non_negative("validation_timeout", validation_timeout)
        self.wait_time_after_min_received = _non_negative("wait_time_after_min_received", wait_time_after_min_received)
        self.local_rounds = _positive_int("local_rounds", local_rounds)
        self.train_task_name = _task_name("train_task_name", train_task_name)
        self.submit_model_task_name = (
            "" if submit_model_task_name == "" else _task_name("submit_model_task_name", submit_model_task_name)
        )
        self.evaluate_task_name = _task_name("evaluate_task_name", evaluate_task_name)
        self.params_exchange_format = _choice("params_exchange_format", params_exchange_format, EXCHANGE_FORMATS)
        self.params_transfer_type = _choice("params_transfer_type", params_transfer_type, TRANSFER_TYPES)
        self.aggregate_only_regex = _text("aggregate_only_regex", aggregate_only_regex)
        if self.aggregate_only_regex:
            try:
                re.compile(self.aggregate_only_regex)
            except re.error as exc:
                raise FlipConfigError(f"aggregate_only_regex is not a regular expression: {exc}.") from None
        if best_model_metric is not None:
            best_model_metric = _text("best_model_metric", best_model_metric, empty=False)
            if self.num_rounds <= 1:
                raise FlipConfigError(
                    f"best_model_metric={best_model_metric!r} needs num_rounds > 1: the best model is chosen among "
                    "the rounds' global models, and NVFlare's selector skips the first round. Remove "
                    "best_model_metric, or run more rounds."
                )
        if not isinstance(best_model_metric_minimize, bool):
            raise FlipConfigError("best_model_metric_minimize must be True or False.")
        self.best_model_metric = best_model_metric
        self.best_model_metric_minimize = best_model_metric_minimize
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

    # ------------------------------------------------------------------ the apps

    def apps(self) -> tuple[AppSpec, AppSpec]:
        """The server app (the standard template's) and the Client API client app."""
        return self.server_app(), self.client_app()

    def shareable_generator(self) -> list[Component]:
        """The components that turn the aggregated update into the next global model."""
        return [
            Component(
                "shareable_generator",
                "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
            )
        ]

    def server_app(self) -> AppSpec:
        """The server app: persistence, aggregation, hub widgets, results, and the workflows."""
        components = [
            self._backend(server=True),
            Component(
                "persistor",
                "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
                {"model": {"path": "models.get_model"}},
            ),
            *self.shareable_generator(),
            Component(
                "aggregator",
                "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator",
                {"expected_data_kind": "WEIGHT_DIFF", "aggregation_weights": {}},
            ),
        ]
        if self.best_model_metric is not None:
            selector: dict[str, Any] = {"key_metric": self.best_model_metric}
            if self.best_model_metric_minimize:
                selector["negate_key_metric"] = True
            components.append(
                Component(
                    "model_selector", "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector", selector
                )
            )
        components += [
            Component(
                "model_locator",
                "nvflare.app_opt.pt.file_model_locator.PTFileModelLocator",
                {"pt_persistor_id": "persistor"},
            ),
            *_HUB_WIDGETS,
            Component("validation_json_generator", "flip_nvflare.components.ValidationJsonGenerator"),
            Component("results_uploader", "flip_nvflare.components.ResultsUploader"),
        ]
        sites = {"participating_clients": "{participating_clients}"}
        workflows = [
            Component(
                "init_training", "flip_nvflare.controllers.InitTraining", {"min_clients": "{min_clients}", **sites}
            ),
            Component(
                "scatter_and_gather",
                "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
                {
                    "min_clients": "{min_clients}",
                    "num_rounds": "{global_rounds}",
                    "start_round": 0,
                    "wait_time_after_min_received": self.wait_time_after_min_received,
                    "aggregator_id": "aggregator",
                    "persistor_id": "persistor",
                    "shareable_generator_id": "shareable_generator",
                    "train_task_name": self.train_task_name,
                    "train_timeout": 0,
                    "ignore_result_error": "{ignore_result_error}",
                    "snapshot_every_n_rounds": 0,
                },
            ),
            Component(
                "cross_site_validation",
                "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                {
                    "model_locator_id": "model_locator",
                    "submit_model_task_name": self.submit_model_task_name,
                    "validation_task_name": self.evaluate_task_name,
                    "validation_timeout": self.validation_timeout,
                    **sites,
                },
            ),
            Component("cleanup", "flip_nvflare.controllers.CleanupClients", {"task_name": "post_validation", **sites}),
        ]
        return AppSpec(params=self._server_params(self.num_rounds), components=components, workflows=workflows)

    def client_app(self) -> AppSpec:
        """The client app: cohort check, the script through the Client API, privacy, cleanup."""
        tasks = [self.train_task_name, self.evaluate_task_name]
        if self.submit_model_task_name:
            tasks.insert(1, self.submit_model_task_name)
        runner_tasks = {
            "train_task_name": self.train_task_name,
            "evaluate_task_name": self.evaluate_task_name,
            "submit_model_task_name": self.submit_model_task_name or "submit_model",
            "params_exchange_format": self.params_exchange_format,
            "params_transfer_type": self.params_transfer_type,
        }
        result_filters: list[Filter] = []
        if self.aggregate_only_regex:
            # NVFlare's ExcludeVars drops names its regex finds: drop every name the regex does not match
            result_filters.append(
                Filter(
                    "nvflare.app_common.filters.exclude_vars.ExcludeVars",
                    {"exclude_vars": f"^(?!.*(?:{self.aggregate_only_regex}))"},
                )
            )
        privacy = self.percentile_privacy
        result_filters.append(
            Filter(
                "flip_nvflare.filters.PercentilePrivacy",
                {"percentile": privacy.percentile, "gamma": privacy.gamma, "off": privacy.off},
            )
        )
        return AppSpec(
            params=self._client_params(),
            components=self._client_components(),
            executors=[
                Executor(["init_training"], "flip_nvflare.executors.CohortPreparer", preparer_args()),
                Executor(
                    tasks,
                    "flip_nvflare.executors.ClientApiRunner",
                    self._script_executor_args(self.train_script, self.train_args, runner_tasks),
                ),
                Executor(["post_validation"], "flip_nvflare.executors.ImageCleanup"),
            ],
            task_result_filters=[([self.train_task_name], result_filters)],
        )

    # ------------------------------------------------------------------ shared parts

    def _client_params(self) -> dict[str, Any]:
        return {**super()._client_params(), "local_rounds": self.local_rounds}
