"""FlipFedOptRecipe: FLIP's fed_opt job: FedAvg's apps with a server optimizer applying the averaged update.

The clients are the standard job's (the same script works unchanged); the server's shareable
generator treats the averaged ``WEIGHT_DIFF`` as a pseudo-gradient for a ``torch.optim``
optimizer (NVFlare's ``PTFedOptModelShareableGenerator``), by default SGD at ``lr=1.0``,
``momentum=0.6`` (NVFlare's FedOpt defaults).
"""

from __future__ import annotations

from typing import Any

from flip_nvflare.constants import JobType
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.recipes.fedavg import FlipFedAvgRecipe
from flip_nvflare.recipes.spec import Component

#: The server optimizer when none is given (NVFlare's FedOpt defaults).
DEFAULT_OPTIMIZER_ARGS: dict[str, Any] = {
    "path": "torch.optim.SGD",
    "args": {"lr": 1.0, "momentum": 0.6},
    "config_type": "dict",
}


def _component_config(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"].strip():
        raise FlipConfigError(f'{name} must be a dict with a "path" (e.g. "torch.optim.SGD") and optional "args".')
    if not isinstance(value.get("args", {}), dict):
        raise FlipConfigError(f'{name}["args"] must be a dict of keyword arguments.')
    return {"config_type": "dict", **value}


class FlipFedOptRecipe(FlipFedAvgRecipe):
    """FLIP's FedOpt recipe: :class:`FlipFedAvgRecipe`'s arguments, plus the server optimizer's.

    Args:
        optimizer_args: The server optimizer as ``{"path": "torch.optim.X", "args": {...}}``.
        lr_scheduler_args: Optional learning-rate scheduler of that optimizer, same shape.
        device: Where the server's copy of the model lives for the optimizer step (``"cpu"``).
        **kwargs: Every argument of :class:`FlipFedAvgRecipe`.
    """

    job_type = JobType.FED_OPT
    job_name = "flip_fedopt"

    def __init__(
        self,
        *,
        optimizer_args: dict[str, Any] | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        self.optimizer_args = _component_config(
            "optimizer_args", DEFAULT_OPTIMIZER_ARGS if optimizer_args is None else optimizer_args
        )
        self.lr_scheduler_args = (
            None if lr_scheduler_args is None else _component_config("lr_scheduler_args", lr_scheduler_args)
        )
        if not isinstance(device, str) or not device.strip():
            raise FlipConfigError(f"device must be a torch device name such as 'cpu', got {device!r}.")
        self.device = device
        super().__init__(**kwargs)

    def shareable_generator(self) -> list[Component]:
        """The user's model (the optimizer's parameters) and the FedOpt shareable generator."""
        return [
            Component("model", "models.get_model"),
            Component(
                "shareable_generator",
                "nvflare.app_opt.pt.fedopt.PTFedOptModelShareableGenerator",
                {
                    "source_model": "model",
                    "device": self.device,
                    "optimizer_args": self.optimizer_args,
                    "lr_scheduler_args": self.lr_scheduler_args,
                },
            ),
        ]
