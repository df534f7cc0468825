"""A Client API training script that fails at site-2 with patient data in its message (test job part)."""

import json
from pathlib import Path

import nvflare.client as flare

from flip_nvflare import FLIP


def read_study(path: str, query: str) -> None:
    raise FileNotFoundError(f"cannot read {path} selected by {query!r}")


def main() -> None:
    config = json.loads((Path(__file__).resolve().parent.parent / "config" / "config_fed_client.json").read_text())
    flip = FLIP()
    frame = flip.get_dataframe(config["project_id"], config["query"])
    flare.init()
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        if flare.get_site_name() == "site-2" and flare.is_train():
            accession = str(frame["accession_id"].iloc[0])
            folder = flip.get_by_accession_number(config["project_id"], accession)
            read_study(f"{folder}/{accession}_t1.nii.gz", config["query"])
        flare.send(flare.FLModel(params={k: v * 0 for k, v in model.params.items()}, params_type="DIFF"))


main()
