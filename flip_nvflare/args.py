"""Checks of the arguments a job config gives to flip-nvflare components.

NVFlare builds a component from the ``args`` of its JSON config entry and passes each value as
JSON decoded it. A value of the wrong JSON type must stop the job at the site with an error naming
the component and the argument, never be coerced: ``bool("false")`` is ``True``, so a quoted
``"false"`` would switch a setting on.
"""

from __future__ import annotations

from flip_nvflare.errors import FlipConfigError, FlipConfigTypeError

__all__ = ["FlipConfigTypeError", "json_bool", "positive_number"]

#: Longest repr of a refused value shown in an error message.
_MAX_SHOWN = 40


def json_bool(owner: str, name: str, value: object) -> bool:
    """``value`` if it is a JSON boolean (``true`` or ``false``); anything else is refused.

    Strings (``"false"``, ``"true"``), numbers (``0``, ``1``), ``null`` and numpy booleans are
    refused rather than converted.

    Args:
        owner: The component the argument belongs to (e.g. ``"FlipBackend"``).
        name: The argument's name in the config (e.g. ``"allow_dev_in_secure_mode"``).
        value: The value the config gave.

    Returns:
        ``value`` itself.

    Raises:
        FlipConfigTypeError: ``value`` is not ``True`` or ``False`` (a FlipConfigError and a TypeError).
    """
    if isinstance(value, bool):
        return value
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    raise FlipConfigTypeError(
        f"{owner}: {name} must be true or false (a JSON boolean, without quotes), "
        f'got {shown} ({type(value).__name__}); write "{name}": true or "{name}": false in the component\'s args.'
    )


def positive_number(owner: str, name: str, value: object) -> float:
    """``value`` as a float if it is a number above zero (not a boolean); anything else is refused.

    Args:
        owner: The component the argument belongs to (e.g. ``"FlipBackend"``).
        name: The argument's name in the config (e.g. ``"drain_timeout"``).
        value: The value the config gave.

    Raises:
        FlipConfigError: ``value`` is not a number above zero.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise FlipConfigError(f"{owner}: {name} must be a positive number, got {value!r}.")
    return float(value)
