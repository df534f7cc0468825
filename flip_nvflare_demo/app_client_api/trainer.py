"""The demo's training script in FLIP's Client API style (what FLIP's ``*_client_api`` tutorials look like).

``FLIP()`` gives the cohort (the job's backend: dev files or the trust's services), NVFlare's
Client API brings each round's global model and takes back the update (a weight difference),
and ``SummaryWriter.add_scalar`` reports metrics: ``train_loss@epoch`` against local epochs,
``val_accuracy`` against the round. The job is built by ``job.py`` (FlipFedAvgRecipe).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import nvflare.client as flare
import torch
from data_utils import evaluate, fetch_cohort, load_config, load_query, seed_for, split_cohort
from models import get_model
from nvflare.client.tracking import SummaryWriter
from torch import nn

from flip_nvflare import FLIP

logger = logging.getLogger(__name__)


def train(model: nn.Module, train_set, config: dict, seed: int, writer: SummaryWriter, first_epoch: int) -> int:
    """``LOCAL_ROUNDS`` epochs on the training split; returns the optimizer steps taken."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["LEARNING_RATE"])
    batch_size = int(config["BATCH_SIZE"])
    steps = 0
    for epoch in range(int(config["LOCAL_ROUNDS"])):
        model.train()
        order = torch.randperm(len(train_set))
        losses = []
        for start in range(0, len(train_set), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(train_set.images[batch]), train_set.labels[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
        writer.add_scalar("train_loss@epoch", float(np.mean(losses)), global_step=first_epoch + epoch + 1)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project_id", type=str, default="")
    args = parser.parse_args()
    config = load_config()

    flip = FLIP()
    cohort, accessions = fetch_cohort(flip, args.project_id, load_query(), config["LABEL_COLUMN"])
    train_set, val_set = split_cohort(cohort, accessions, config["VAL_SPLIT"], config["SPLIT_SEED"])
    model = get_model()

    flare.init()
    writer = SummaryWriter()
    site = flare.get_site_name()
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        global_round = input_model.current_round or 0
        global_weights = {name: np.asarray(value) for name, value in input_model.params.items()}
        model.load_state_dict({name: torch.as_tensor(value) for name, value in global_weights.items()})

        if flare.is_train():
            incoming = evaluate(model, val_set)
            writer.add_scalar("val_accuracy", incoming["accuracy"], global_step=global_round)
            seed = seed_for(site, global_round, config["SPLIT_SEED"])
            steps = train(model, train_set, config, seed, writer, global_round * int(config["LOCAL_ROUNDS"]))
            new_weights = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
            diff = {name: new_weights[name] - global_weights[name] for name in new_weights}
            flare.send(
                flare.FLModel(
                    params=diff,
                    params_type="DIFF",
                    metrics={"val_accuracy": incoming["accuracy"]},
                    meta={"NUM_STEPS_CURRENT_ROUND": steps},
                )
            )
        elif flare.is_evaluate():
            metrics = evaluate(model, val_set)
            flare.send(flare.FLModel(metrics={f"val_{k}": v for k, v in metrics.items() if np.isfinite(v)}))
        elif flare.is_submit_model():
            params = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
            flare.send(flare.FLModel(params=params, params_type="FULL"))


if __name__ == "__main__":
    main()
