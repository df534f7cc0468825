"""The demo's evaluation script in FLIP's Client API style: each model the server sends, scored on the cohort.

Only cohort-level metrics leave the site (accuracy, sensitivity, specificity, the number of cases).
"""

from __future__ import annotations

import argparse

import numpy as np
import nvflare.client as flare
import torch
from data_utils import evaluate, fetch_cohort, load_config, load_query
from models import get_model

from flip_nvflare import FLIP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project_id", type=str, default="")
    args = parser.parse_args()
    config = load_config()

    flip = FLIP()
    cohort, _ = fetch_cohort(flip, args.project_id, load_query(), config["LABEL_COLUMN"])
    model = get_model()

    flare.init()
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        if flare.is_evaluate():
            model.load_state_dict({name: torch.as_tensor(value) for name, value in input_model.params.items()})
            metrics = evaluate(model, cohort)
            wanted = config["evaluation_output"]["metrics"]
            flare.send(flare.FLModel(metrics={k: metrics[k] for k in wanted if np.isfinite(metrics[k])}))


if __name__ == "__main__":
    main()
