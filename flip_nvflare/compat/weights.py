"""``get_model_weights_diff``: the weight update a FLIP trainer returns (FLIP's ``flip.utils`` helper).

Imports NumPy and NVFlare only when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flip_nvflare.errors import FlipInvalidArgument, FlipKeyError

if TYPE_CHECKING:
    from nvflare.apis.dxo import DXO


def get_model_weights_diff(original_weights: Mapping[str, Any], new_weights: Mapping[str, Any], iterations: int) -> DXO:
    """The weight update a trainer sends: ``new - original`` for every weight, as a WEIGHT_DIFF DXO.

    Same call as FLIP's ``flip.utils.get_model_weights_diff``. Weights may be PyTorch tensors
    (on any device) or anything NumPy can convert; the difference is computed one weight at a
    time, so no second full copy of the model is held.

    Args:
        original_weights: The weights received from the server (before local training).
        new_weights: The weights after local training (e.g. ``model.state_dict()``).
        iterations: Number of training steps done this round (``NUM_STEPS_CURRENT_ROUND``).

    Returns:
        A DXO of kind ``WEIGHT_DIFF`` with NumPy arrays.

    Raises:
        FlipKeyError: A weight of ``new_weights`` is missing from ``original_weights`` (a KeyError).
        FlipInvalidArgument: Shapes differ for a weight, or ``iterations`` is negative (a ValueError).
    """
    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise FlipInvalidArgument(f"iterations must be an integer >= 0, got {iterations!r}.")
    diff: dict[str, Any] = {}
    for name, new_value in new_weights.items():
        if name not in original_weights:
            raise FlipKeyError(
                f"Weight {name!r} is in the new weights but not in the original ones: compare the same model's state."
            )
        updated = _as_array(new_value)
        original = _as_array(original_weights[name])
        if updated.shape != original.shape:
            raise FlipInvalidArgument(f"Weight {name!r} changed shape from {original.shape} to {updated.shape}.")
        diff[name] = np.subtract(updated, original)
    return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: int(iterations)})


def _as_array(value: Any) -> Any:
    """A NumPy array from a tensor (detached, on the CPU) or anything array-like, without importing torch."""
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
