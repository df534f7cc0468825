"""``flip-nvflare demo --tracking mlflow``: the demo's MLflow store, the tracker in its job, and how to look.

Without ``MLFLOW_TRACKING_URI`` in the environment the demo keeps a local MLflow store under its
working folder (``<workdir>/mlflow/mlflow.db``, a SQLite file, and ``<workdir>/mlflow/artifacts``):
the FL server writes to it directly, no MLflow server is needed for the run, and ``mlflow ui`` shows
it afterwards. With ``MLFLOW_TRACKING_URI`` set, the server (a child of the demo, so it inherits the
variable) tracks there instead and the URI is not written into the job. Nothing here imports MLflow
until the run is over and its result is read back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The tracker's component path in the job config.
TRACKER_PATH = "flip_nvflare.components.tracking.MlflowTracker"
TRACKER_ID = "mlflow_tracker"
#: ``--tracking`` choices.
CHOICES = ("mlflow",)


def mlflow_missing() -> str | None:
    """Why ``--tracking mlflow`` cannot run here (the extra is not installed), or None."""
    if importlib.util.find_spec("mlflow") is None:
        return "--tracking mlflow needs MLflow: pip install 'flip-nvflare[mlflow]'"
    return None


@dataclass(frozen=True)
class DemoTracking:
    """Where the demo's run is tracked.

    Attributes:
        tracking_uri: The tracking URI.
        artifact_root: The local artifact folder (a local store only).
        local: Whether the store is the demo's own SQLite file.
    """

    tracking_uri: str
    artifact_root: Path | None
    local: bool

    @classmethod
    def for_workdir(cls, workdir: Path, environ: Mapping[str, str] | None = None) -> DemoTracking:
        """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``<workdir>/mlflow`` (made if missing)."""
        env = os.environ if environ is None else environ
        uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        if uri:
            return cls(uri, None, False)
        store = workdir.resolve() / "mlflow"
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", True)

    def add_to_job(self, job_dir: Path) -> None:
        """Add MlflowTracker as the last component of the job's server config."""
        path = job_dir / "app" / "config" / "config_fed_server.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        args: dict[str, str] = {}
        if self.local:  # an inherited MLFLOW_TRACKING_URI stays out of the job (it may hold credentials)
            args["tracking_uri"] = self.tracking_uri
        if self.artifact_root is not None:
            args["artifact_location"] = self.artifact_root.as_uri()
        components = [c for c in config.get("components", []) if c.get("id") != TRACKER_ID]
        components.append({"id": TRACKER_ID, "path": TRACKER_PATH, "args": args})
        config["components"] = components
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def shown_uri(self) -> str:
        """The tracking URI without any user or password part."""
        return re.sub(r"//[^/@]*@", "//***@", self.tracking_uri)

    def ui_command(self) -> str:
        """How to look at the run."""
        if self.local:
            return f"mlflow ui --backend-store-uri {self.tracking_uri}"
        return f"open the MLflow UI of {self.shown_uri()}"

    def describe(self, model_id: str) -> list[str]:
        """Lines about the job's MLflow run (read back with MLflow's client), ending with how to look."""
        experiment_name = f"flip/{model_id}"
        lines = [f"MLflow: experiment {experiment_name} at {self.shown_uri()}"]
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment = client.get_experiment_by_name(experiment_name)
            runs = client.search_runs([experiment.experiment_id], max_results=1) if experiment else []
        except Exception as exc:  # a look-back only: the run's own log has the tracker's counts
            lines.append(f"  (could not read it back: {type(exc).__name__})")
            runs = []
        if runs:
            run = runs[0]
            tags = run.data.tags
            lines.append(
                f"  latest run {run.info.run_id}: {run.info.status}, {len(run.data.metrics)} metric series, "
                f"{len(run.data.params)} params, final status {tags.get('flip.final_status', '-')}, "
                f"results {tags.get('flip.results', '-')}, "
                f"metrics not logged {tags.get('flip.tracking.metrics_not_logged', '-')}"
            )
        lines.append(f"  to look at it: {self.ui_command()}")
        return lines
