"""Cohort loading shared by the demo's trainer, validator and evaluator (both app styles).

The cohort comes from FLIP through the job's preparation task: CohortPreparer ran
``get_dataframe`` (one row per imaging study, with ``accession_id`` and the label) and
``get_by_accession_number`` for each study's NIfTI, and ``prepared_cohort()`` hands the result to
the app. Nothing here logs accession ids or paths: they can identify patients.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flip_nvflare import prepared_cohort

logger = logging.getLogger(__name__)

CONFIG_PATH = Path(__file__).with_name("config.json")


def load_config() -> dict[str, Any]:
    """The app's hyper-parameters (``config.json`` beside this file); applies ``TORCH_THREADS``.

    Small models train fastest on one CPU thread per site: with several sites on one machine (the
    simulator), more threads only make them fight over the cores.
    """
    with open(CONFIG_PATH, encoding="utf-8") as fh:
        config: dict[str, Any] = json.load(fh)
    threads = config.get("TORCH_THREADS")
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    return config


def load_query() -> str:
    """A Client API script's cohort query, from its client app config (NVFlare splits script arguments at spaces)."""
    client_config = Path(__file__).resolve().parent.parent / "config" / "config_fed_client.json"
    return str(json.loads(client_config.read_text(encoding="utf-8")).get("query", ""))


@dataclass
class Cohort:
    """A site's cases as tensors: ``images`` (N, 1, X, Y, Z) normalised per volume, ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> Cohort:
        """The cases at ``index``."""
        chosen = torch.as_tensor(index, dtype=torch.long)
        return Cohort(self.images[chosen], self.labels[chosen])


def load_cohort(label_column: str) -> tuple[Cohort, list[str]]:
    """The cohort CohortPreparer already fetched for this job, as tensors; also the accession ids.

    The job's preparation task fetched the dataframe and each study's NIfTI once
    (``prepared_cohort()``); the app does not fetch them again. Studies without a usable image
    or label are skipped (counted in the log, never named).
    """
    cohort = prepared_cohort()
    frame = cohort.ready_dataframe()
    for column in (cohort.accession_column, label_column):
        if column not in frame.columns:
            raise ValueError(f"The cohort has no {column!r} column; the query must return it.")
    rows = zip(frame[cohort.accession_column], frame[label_column], frame["image_folder"], strict=True)
    return _tensors(((str(a), label, Path(folder)) for a, label, folder in rows), len(cohort.missing))


def fetch_cohort(flip: Any, project_id: str, query: str, label_column: str) -> tuple[Cohort, list[str]]:
    """The cohort of a Client API script, fetched as FLIP's tutorials do it: the dataframe, then each study.

    ``flip`` is ``FLIP()``: ``get_dataframe`` runs the query at the trust, ``get_by_accession_number``
    gives each study's image folder. A study whose images cannot be fetched is skipped (counted,
    never named).
    """
    frame = flip.get_dataframe(project_id, query)
    for column in ("accession_id", label_column):
        if column not in frame.columns:
            raise ValueError(f"The cohort has no {column!r} column; the query must return it.")
    rows: list[tuple[str, Any, Path]] = []
    failed = 0
    for accession_id, label in zip(frame["accession_id"], frame[label_column], strict=True):
        try:
            rows.append((str(accession_id), label, Path(flip.get_by_accession_number(project_id, str(accession_id)))))
        except Exception:
            failed += 1
    return _tensors(iter(rows), failed)


def _tensors(rows: Any, skipped: int) -> tuple[Cohort, list[str]]:
    """Each (accession id, label, image folder) as a normalised volume and a label; unusable ones skipped."""
    import nibabel as nib

    volumes: list[np.ndarray] = []
    labels: list[int] = []
    accessions: list[str] = []
    for accession_id, label, folder in rows:
        files = sorted(folder.rglob("*.nii*"))
        if not files or label not in (0, 1):
            skipped += 1
            continue
        image: Any = nib.load(str(files[0]))
        volume = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
        volumes.append((volume - volume.mean()) / (volume.std() + 1e-6))
        labels.append(int(label))
        accessions.append(accession_id)
    if not volumes:
        raise ValueError("No usable study in the cohort (each needs a NIfTI image and a 0/1 label).")
    logger.info("Cohort loaded: %d studies with images, %d skipped.", len(volumes), skipped)
    images = torch.from_numpy(np.stack(volumes))[:, None]
    return Cohort(images, torch.tensor(labels, dtype=torch.long)), accessions


def split_cohort(cohort: Cohort, accessions: list[str], val_split: float, seed: int) -> tuple[Cohort, Cohort]:
    """A train/validation split that depends only on the accession ids and the seed."""
    order = sorted(range(len(accessions)), key=lambda i: zlib.crc32(f"{seed}:{accessions[i]}".encode()))
    n_val = max(1, round(val_split * len(order)))
    index = np.array(order)
    return cohort.subset(index[n_val:]), cohort.subset(index[:n_val])


def evaluate(model: nn.Module, cohort: Cohort, batch_size: int = 32) -> dict[str, float]:
    """Accuracy, sensitivity, specificity and mean loss of ``model`` on ``cohort``."""
    model.eval()
    predictions: list[torch.Tensor] = []
    loss_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(cohort), batch_size):
            images = cohort.images[start : start + batch_size]
            labels = cohort.labels[start : start + batch_size]
            logits = model(images)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            predictions.append(logits.argmax(dim=1))
    predicted = torch.cat(predictions)
    truth = cohort.labels
    positives = truth == 1
    negatives = truth == 0
    return {
        "accuracy": float((predicted == truth).float().mean()),
        "sensitivity": float((predicted[positives] == 1).float().mean()) if positives.any() else float("nan"),
        "specificity": float((predicted[negatives] == 0).float().mean()) if negatives.any() else float("nan"),
        "loss": loss_sum / len(cohort),
        "n_cases": float(len(cohort)),
    }


def seed_for(site: str, global_round: int, base_seed: int) -> int:
    """A training seed that differs per site and round but is the same on every run."""
    return (base_seed * 1000 + global_round * 100 + zlib.crc32(site.encode()) % 100) % (2**31)
