"""CheckpointModelLocator: the models an evaluation job evaluates, read from checkpoints on the server.

The app's ``config.json`` names each model and its checkpoint file::

    "models": {"baseline": {"checkpoint": "baseline.pt"}, "finetuned": {"checkpoint": "ft/model.pt"}}

The locator reads those files from ``checkpoint_dir`` on the server only; clients receive the
weights in the evaluation task (EvaluateModels sends every model in one COLLECTION task, by name;
NVFlare's GlobalModelEval one model per task; either way the weights' DXO meta ``model_name`` names
the model) and never the files. Every checkpoint name is checked to stay inside ``checkpoint_dir``.

``flip-nvflare job create --type evaluation`` sets ``checkpoint_dir`` to an absolute folder and
leaves the checkpoints out of the job's ``custom/`` folder (which is deployed to every client). If
``checkpoint_dir`` is empty, the job's own ``custom/`` folder is used, with a warning: a job built
that way (e.g. by ``nvflare job create``) ships its checkpoints to every client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from nvflare.apis.dxo import DXO
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from flip_nvflare.errors import FlipConfigError

#: DXO meta key naming the model in an evaluation task's weights.
MODEL_NAME_META = "model_name"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CheckpointModelLocator(ModelLocator):
    """Locates the models named in the app's ``config.json`` in a server-side checkpoints folder.

    Args:
        checkpoint_dir: Folder on the server holding the checkpoint files. Empty: the job's
            ``custom/`` folder (warned about: it is deployed to clients too).
        config_file: The app's config file, in the job's ``custom/`` folder.
        models_key: The key of ``config_file`` listing the models.
        default_checkpoint: When ``config_file`` lists no models, evaluate this one checkpoint as the
            model ``"model"`` (FLIP's Client API evaluation apps ship ``model.pt``). Empty: a config
            without models is an error.
    """

    def __init__(
        self,
        checkpoint_dir: str = "",
        config_file: str = "config.json",
        models_key: str = "models",
        default_checkpoint: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(default_checkpoint, str):
            raise FlipConfigError("CheckpointModelLocator: default_checkpoint must be a file name (a string).")
        self._default_checkpoint = default_checkpoint
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, str):
            raise FlipConfigError("CheckpointModelLocator: checkpoint_dir must be a folder path (a string).")
        self._checkpoint_dir_arg = checkpoint_dir or ""
        self._config_file = config_file
        self._models_key = models_key
        self._checkpoints: dict[str, Path] | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Check every model's checkpoint at START_RUN, so a bad config fails before any task."""
        if event_type == EventType.START_RUN:
            try:
                self._checkpoints = self._find_checkpoints(fl_ctx)
            except FlipConfigError as exc:
                self.log_error(fl_ctx, str(exc), fire_event=False)
                self.system_panic(str(exc), fl_ctx)

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """The names of the models to evaluate, in the config's order."""
        return list(self._ensure(fl_ctx))

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        """The weights of ``model_name`` as a WEIGHTS DXO (``model_name`` in its meta)."""
        path = self._ensure(fl_ctx).get(model_name)
        if path is None:
            self.log_error(fl_ctx, f"No model named {model_name!r} in {self._config_file}.", fire_event=False)
            return None
        dxo = load_checkpoint_dxo(path)
        dxo.set_meta_prop(MODEL_NAME_META, model_name)
        self.log_info(fl_ctx, f"Loaded model {model_name!r} from {path.name}.")
        return dxo

    # ------------------------------------------------------------------ helpers

    def _ensure(self, fl_ctx: FLContext) -> dict[str, Path]:
        if self._checkpoints is None:
            self._checkpoints = self._find_checkpoints(fl_ctx)
        return self._checkpoints

    def _find_checkpoints(self, fl_ctx: FLContext) -> dict[str, Path]:
        custom_dir = Path(str(fl_ctx.get_prop(FLContextKey.APP_ROOT))) / "custom"
        config_path = custom_dir / self._config_file
        models = _read_models(config_path, self._models_key, self._default_checkpoint)
        if self._checkpoint_dir_arg:
            folder = Path(self._checkpoint_dir_arg)
        else:
            folder = custom_dir
            self.log_warning(
                fl_ctx,
                "CheckpointModelLocator has no checkpoint_dir: reading checkpoints from the job's custom folder, "
                "which is deployed to every client. Build evaluation jobs with 'flip-nvflare job create --type "
                "evaluation' to keep checkpoints on the server.",
                fire_event=False,
            )
        return resolve_checkpoints(models, folder)


def _read_models(config_path: Path, models_key: str, default_checkpoint: str = "") -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlipConfigError(
            f"The evaluation app has no {config_path.name}: add it with a {models_key!r} entry naming each model "
            'and its checkpoint, e.g. {"models": {"my_model": {"checkpoint": "my_model.pt"}}}.'
        ) from None
    except (OSError, ValueError) as exc:
        raise FlipConfigError(f"{config_path.name} cannot be read as JSON ({type(exc).__name__}).") from None
    models = config.get(models_key) if isinstance(config, dict) else None
    if models is None and default_checkpoint:
        return {"model": {"checkpoint": default_checkpoint}}
    if not isinstance(models, dict) or not models:
        raise FlipConfigError(
            f"{config_path.name} has no {models_key!r} to evaluate: add "
            '{"models": {"my_model": {"checkpoint": "my_model.pt"}}}.'
        )
    return models


def resolve_checkpoints(models: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Model name -> checkpoint path inside ``folder``; every problem reported in one error.

    Raises:
        FlipConfigError: A name is unusable, a checkpoint points outside ``folder`` or is missing.
    """
    root = folder.resolve()
    problems: list[str] = []
    found: dict[str, Path] = {}
    if not root.is_dir():
        raise FlipConfigError(f"The checkpoints folder {folder} does not exist on the server.")
    for name, entry in models.items():
        checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
        if not _MODEL_NAME.fullmatch(str(name)):
            problems.append(f"model name {name!r} is not 1-64 letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(checkpoint, str) or not checkpoint:
            problems.append(f"model {name!r} names no checkpoint")
            continue
        relative = PurePosixPath(checkpoint.replace("\\", "/"))
        path = (root / relative).resolve()
        if relative.is_absolute() or ".." in relative.parts or not path.is_relative_to(root):
            problems.append(f"model {name!r}: checkpoint {checkpoint!r} is outside the checkpoints folder")
        elif not path.is_file():
            problems.append(f"model {name!r}: checkpoint {checkpoint!r} not found in the checkpoints folder")
        else:
            found[str(name)] = path
    if problems:
        raise FlipConfigError(f"Evaluation models in {root}: " + "; ".join(problems) + ".")
    return found


def load_checkpoint_dxo(path: Path) -> DXO:
    """A PyTorch checkpoint (a state dict, or NVFlare's ``{"model": state_dict, ...}``) as a WEIGHTS DXO."""
    import torch
    from nvflare.app_common.abstract.model import model_learnable_to_dxo
    from nvflare.app_opt.pt.model_persistence_format_manager import PTModelPersistenceFormatManager

    data = torch.load(path, map_location="cpu", weights_only=True)
    manager = PTModelPersistenceFormatManager(data, default_train_conf=None)
    return model_learnable_to_dxo(manager.to_model_learnable(exclude_vars=None))
