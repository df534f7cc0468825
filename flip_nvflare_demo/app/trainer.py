"""FLIP_TRAINER: local training of the demo's CNN at one site, one federated round per ``train`` task.

Written in the FLIP style: an NVFlare Executor built with the job's ``project_id`` and ``query``;
it reads the cohort the job prepared through ``prepared_cohort()`` and reports metrics with
``send_metrics_value`` (they reach the hub through the server; this process never talks to the hub).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from data_utils import Cohort, evaluate, load_cohort, load_config, seed_for, split_cohort
from models import get_model
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from torch import nn

from flip_nvflare import PTConstants, send_metrics_value

logger = logging.getLogger(__name__)


class FLIP_TRAINER(Executor):
    """Trains the global model on this site's training split for ``LOCAL_ROUNDS`` epochs per round.

    Each ``train`` task: measure the incoming global model on the site's validation split
    (``val_accuracy``, also the key metric for best-model selection), train, report
    ``train_loss`` and ``local_val_accuracy``, and return the weight difference.
    ``submit_model`` returns the last local model.

    Args:
        project_id: The project's encrypted id (the job config's ``project_id``).
        query: The cohort query (the job config's ``query``).
        train_task_name: Task name for training.
        submit_model_task_name: Task name for submitting the local model.
    """

    def __init__(
        self,
        project_id: str = "",
        query: str = "",
        train_task_name: str = AppConstants.TASK_TRAIN,
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.query = query
        self._train_task_name = train_task_name
        self._submit_model_task_name = submit_model_task_name
        self.config = load_config()
        self.model = get_model()
        self._split: tuple[Cohort, Cohort] | None = None

    def _data(self) -> tuple[Cohort, Cohort]:
        if self._split is None:
            cohort, accessions = load_cohort(self.config["LABEL_COLUMN"])
            self._split = split_cohort(cohort, accessions, self.config["VAL_SPLIT"], self.config["SPLIT_SEED"])
            logger.info("Training split: %d train, %d validation.", len(self._split[0]), len(self._split[1]))
        return self._split

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Run one task (``train`` or ``submit_model``)."""
        if task_name == self._train_task_name:
            return self._train(shareable, fl_ctx, abort_signal)
        if task_name == self._submit_model_task_name:
            return self._submit_model(fl_ctx)
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def _train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        global_round = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0))
        global_weights = {name: np.asarray(value) for name, value in dxo.data.items()}
        self.model.load_state_dict({name: torch.as_tensor(value) for name, value in global_weights.items()})
        train_set, val_set = self._data()

        incoming = evaluate(self.model, val_set)
        send_metrics_value("val_accuracy", incoming["accuracy"], fl_ctx, round=global_round)

        torch.manual_seed(seed_for(fl_ctx.get_identity_name(), global_round, self.config["SPLIT_SEED"]))
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config["LEARNING_RATE"])
        batch_size = int(self.config["BATCH_SIZE"])
        steps = 0
        epoch_loss = float("nan")
        for _epoch in range(int(self.config["LOCAL_ROUNDS"])):
            self.model.train()
            order = torch.randperm(len(train_set))
            losses: list[float] = []
            for start in range(0, len(train_set), batch_size):
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(self.model(train_set.images[batch]), train_set.labels[batch])
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                steps += 1
            epoch_loss = float(np.mean(losses))

        local = evaluate(self.model, val_set)
        send_metrics_value("train_loss", epoch_loss, fl_ctx, round=global_round)
        send_metrics_value("local_val_accuracy", local["accuracy"], fl_ctx, round=global_round)
        self._save_local_model(fl_ctx)

        new_weights = {name: value.detach().cpu().numpy() for name, value in self.model.state_dict().items()}
        diff = {name: new_weights[name] - global_weights[name] for name in new_weights}
        reply = DXO(
            data_kind=DataKind.WEIGHT_DIFF,
            data=diff,
            meta={
                MetaKey.NUM_STEPS_CURRENT_ROUND: steps,
                MetaKey.INITIAL_METRICS: {"val_accuracy": incoming["accuracy"]},
            },
        )
        return reply.to_shareable()

    def _local_model_path(self, fl_ctx: FLContext) -> Path:
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        return Path(run_dir) / "models" / PTConstants.PTLocalModelName

    def _save_local_model(self, fl_ctx: FLContext) -> None:
        path = self._local_model_path(fl_ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path)

    def _submit_model(self, fl_ctx: FLContext) -> Shareable:
        path = self._local_model_path(fl_ctx)
        if not path.is_file():
            return make_reply(ReturnCode.EXECUTION_RESULT_ERROR)
        weights: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        data = {name: value.numpy() for name, value in weights.items()}
        return DXO(data_kind=DataKind.WEIGHTS, data=data).to_shareable()
