"""GaussianPrivacy: differential privacy on the model updates leaving a site, with a budget.

For each ``WEIGHT_DIFF`` or ``WEIGHTS`` update leaving the site, :class:`GaussianPrivacy` clips the
update's L2 norm to ``clip_norm`` (the whole update, or each layer to ``clip_norm / sqrt(layers)``),
adds Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` to every value, and lets
it go. The noise multiplier is given, or calibrated by ``dp-accounting`` so that the job's planned
rounds spend at most a target epsilon (:mod:`flip_nvflare.filters.accounting`); the epsilon
actually spent is recomputed after every release (:mod:`flip_nvflare.filters.budget`) and a cap
refuses the round that would exceed it, before it is trained. See ``docs/privacy.md``.

Full weights are handled as their difference against the global model the site received: the
filter, placed on both the task data (``in``) and the task result (``out``) chains, keeps a copy of
the global model when the task arrives, clips and noises ``weights - global`` and sends
``global + noised difference`` (still ``WEIGHTS``). The DXO meta ``flip_dp`` says which it did.

It fails closed: a DXO kind it cannot filter, a non-float layer, a NaN or infinity, an empty
update, a full-weights update without the global model, settings weaker than the site's minimum, a
fixed seed outside dev mode: each is refused with an error saying what (no layer names, no values),
and NVFlare then sends a filter-error reply without data.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
import threading
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter, FilterChainType, FilterContextKey, FilterSource
from nvflare.apis.fl_constant import EventScope, FilterKey, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.args import json_bool
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipMode
from flip_nvflare.errors import FlipArgumentTypeError, FlipConfigError, FlipInvalidArgument
from flip_nvflare.filters.accounting import ACCOUNTANTS, calibrate_noise_multiplier, require_dp_accounting
from flip_nvflare.filters.budget import (
    PRIVACY_REPORT_EVENT,
    REPORT_EXHAUSTED,
    REPORT_RELEASE,
    BudgetExhausted,
    BudgetLedger,
    Release,
)
from flip_nvflare.filters.percentile_privacy import strip_failed_result

__all__ = ["DPSettings", "GaussianPrivacy", "dev_generator", "privatize", "settings_from_args"]

Array = np.ndarray[Any, Any]

_OWNER = "GaussianPrivacy"
#: Elements per block of the fused clip-and-noise pass (a few cache-resident scratch buffers).
_BLOCK = 1 << 16
#: Relative margin taken off the clip factor, so that float rounding never lifts the norm above the bound.
CLIP_MARGIN = 1e-6
#: Largest noise draw (in standard deviations) assumed when checking that noised values stay finite.
_NOISE_TAIL = 64.0
#: The noise multiplier of a filter given neither a noise multiplier nor a target epsilon.
DEFAULT_NOISE_MULTIPLIER = 1.0
#: The DXO meta key that says what the filter did (numbers and fixed words only).
META_KEY = "flip_dp"
#: The FLContext prop (private, one task) where the filters of a task share what they know.
_TASK_PROP = "_flip_dp_task"
#: The file, in the site's run folder of the job, where the site keeps its privacy ledger.
LEDGER_FILE = "privacy_ledger.json"
_PASS_KINDS = (DataKind.METRICS,)
_MODEL_KINDS = (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS)


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DPSettings:
    """What a DP filter applies; the strictest of the site's and the job's settings.

    Attributes:
        clip_norm: L2 bound of a round's update (the whole update; per-layer bounds add up to it).
        delta: The delta of the guarantee.
        noise_multiplier: Noise standard deviation over ``clip_norm`` (at least this much), or None.
        target_epsilon: Epsilon the job's planned rounds may spend (noise calibrated to it), or None.
        max_epsilon: The cap on epsilon actually spent in this job, or None.
        per_layer: Clip each layer to ``clip_norm / sqrt(layers)`` instead of the whole update.
        accountant: ``"rdp"`` or ``"pld"``.
        num_rounds: The job's planned rounds, if given in the filter's arguments.
    """

    clip_norm: float
    delta: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    per_layer: bool = False
    accountant: str = "rdp"
    num_rounds: int | None = None

    def stricter(self, other: DPSettings) -> DPSettings:
        """The strictest combination of two settings: each value the more private of the two."""
        return DPSettings(
            clip_norm=min(self.clip_norm, other.clip_norm),
            delta=min(self.delta, other.delta),
            noise_multiplier=_max_or_none(self.noise_multiplier, other.noise_multiplier),
            target_epsilon=_min_or_none(self.target_epsilon, other.target_epsilon),
            max_epsilon=_min_or_none(self.max_epsilon, other.max_epsilon),
            per_layer=self.per_layer,
            accountant=self.accountant,
            num_rounds=_max_or_none(self.num_rounds, other.num_rounds),
        )

    def weaker_than(self, minimum: DPSettings) -> list[str]:
        """Every way these settings are weaker than ``minimum`` (empty if none)."""
        problems = []
        if self.clip_norm > minimum.clip_norm:
            problems.append(f"clip_norm {self.clip_norm!r} is above the site maximum {minimum.clip_norm!r}")
        if self.delta > minimum.delta:
            problems.append(f"delta {self.delta!r} is above the site maximum {minimum.delta!r}")
        if minimum.noise_multiplier is not None and (
            self.noise_multiplier is None or self.noise_multiplier < minimum.noise_multiplier
        ):
            problems.append(
                f"noise_multiplier {self.noise_multiplier!r} is below the site minimum {minimum.noise_multiplier!r}"
            )
        if minimum.target_epsilon is not None and (
            self.target_epsilon is None or self.target_epsilon > minimum.target_epsilon
        ):
            problems.append(
                f"target_epsilon {self.target_epsilon!r} is above the site maximum {minimum.target_epsilon!r}"
            )
        if minimum.max_epsilon is not None and (self.max_epsilon is None or self.max_epsilon > minimum.max_epsilon):
            problems.append(f"max_epsilon {self.max_epsilon!r} is above the site cap {minimum.max_epsilon!r}")
        return problems


def _max_or_none(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _min_or_none(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _number(owner: str, name: str, value: object, *, optional: bool = False) -> float | None:
    """A finite real number (never a boolean, never text), or None when optional and not given."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FlipArgumentTypeError(
            f"{owner}: {name} must be a number (a JSON number, not text or true/false), got {value!r}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise FlipConfigError(f"{owner}: {name} must be a finite number, got {value!r}")
    return number


def _positive(owner: str, name: str, value: object, *, optional: bool = False) -> float | None:
    number = _number(owner, name, value, optional=optional)
    if number is not None and not number > 0:
        raise FlipConfigError(f"{owner}: {name} must be above 0, got {value!r}")
    return number


def _count(owner: str, name: str, value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "{global_rounds}")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise FlipConfigError(f"{owner}: {name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def settings_from_args(
    owner: str,
    *,
    clip_norm: object,
    delta: object,
    noise_multiplier: object = None,
    target_epsilon: object = None,
    max_epsilon: object = None,
    per_layer: object = False,
    accountant: object = "rdp",
    num_rounds: object = None,
) -> DPSettings:
    """Check DP arguments as a job config gives them and make them :class:`DPSettings`.

    Raises:
        FlipConfigError: A value is out of range, or neither a noise multiplier nor a target epsilon is set.
        FlipArgumentTypeError: A value has the wrong type (e.g. ``true`` or ``"1.0"`` for a number).
    """
    clip = _positive(owner, "clip_norm", clip_norm)
    assert clip is not None
    delta_value = _number(owner, "delta", delta)
    assert delta_value is not None
    if not 0 < delta_value < 1:
        raise FlipConfigError(f"{owner}: delta must be between 0 and 1 (e.g. 1e-5), got {delta!r}")
    z = _positive(owner, "noise_multiplier", noise_multiplier, optional=True)
    target = _positive(owner, "target_epsilon", target_epsilon, optional=True)
    cap = _positive(owner, "max_epsilon", max_epsilon, optional=True)
    if z is None and target is None:
        raise FlipConfigError(
            f"{owner}: set noise_multiplier (e.g. 1.0) or target_epsilon (e.g. 8) with delta: without either "
            "there is no noise to add"
        )
    if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
        raise FlipConfigError(f"{owner}: accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return DPSettings(
        clip_norm=clip,
        delta=delta_value,
        noise_multiplier=z,
        target_epsilon=target,
        max_epsilon=cap,
        per_layer=json_bool(owner, "per_layer", per_layer),
        accountant=accountant,
        num_rounds=_count(owner, "num_rounds", num_rounds),
    )


def _minimum_from_args(owner: str, minimum: object) -> DPSettings | None:
    if minimum is None:
        return None
    if not isinstance(minimum, Mapping):
        raise FlipConfigError(f"{owner}: minimum must be a mapping of the site's DP minimum, got {minimum!r}")
    allowed = {"clip_norm", "delta", "noise_multiplier", "target_epsilon", "max_epsilon"}
    unknown = sorted(str(k) for k in minimum if k not in allowed)
    if unknown:
        raise FlipConfigError(f"{owner}: minimum has unknown key(s) {', '.join(unknown)}")
    return settings_from_args(f"{owner} minimum", **dict(minimum))


# ---------------------------------------------------------------------------------------------- the maths


@dataclass
class PrivatizeReport:
    """What :func:`privatize` did (numbers only).

    Attributes:
        norm: L2 norm of the update before clipping (of the difference, for full weights).
        clipped: Whether the update (or any layer, per layer) was scaled down.
        values: How many values were noised.
        layers: How many layers.
    """

    norm: float
    clipped: bool
    values: int
    layers: int


def _check_layers(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FlipArgumentTypeError(f"{_OWNER}: {what} must be a dict of numpy arrays, got {type(data).__name__}")
    bad = sorted(
        {
            str(v.dtype) if isinstance(v, (np.ndarray, np.generic)) else type(v).__name__
            for v in data.values()
            if not (isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f")
        }
    )
    if bad:
        count = sum(1 for v in data.values() if not (isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f"))
        raise FlipArgumentTypeError(
            f"{_OWNER}: refused the update: {count} of {len(data)} layers of the {what} are not floating-point "
            f"numpy arrays ({', '.join(bad)}); only float16/32/64 layers can be noised (leave integer buffers "
            "such as batch counters out of the update)"
        )
    return data


def _exclusive(container: dict[str, Any], key: str, sole: int) -> bool:
    return sys.getrefcount(container[key]) <= sole


def _sole_reference_count() -> int:
    probe = {"probe": np.empty(0)}
    return sys.getrefcount(probe["probe"])


def _work_array(value: Any, exclusive: bool) -> Array:
    """The array to change: ``value`` itself when it may be changed in place, else a contiguous copy."""
    if isinstance(value, np.ndarray) and exclusive:
        flags = value.flags
        if flags.writeable and flags.owndata and (flags.c_contiguous or flags.f_contiguous):
            return value
    return np.array(value, copy=True, order="K" if isinstance(value, np.ndarray) else "C", ndmin=0)


def _order(arr: Array) -> Literal["C", "F"]:
    """The order in which ``arr`` flattens to a view of its memory (C unless it is only F-contiguous)."""
    return "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


def _blocks(flat: Array) -> range:
    return range(0, flat.size, _BLOCK)


def _sum_of_squares(flat: Array, scratch: dict[np.dtype[Any], Array]) -> float:
    """Sum of squares of a float array, summed in float64 one block at a time; NaN if a value is not finite.

    Each square is computed in float32 (float64 for float64 layers), which is exact to a relative
    2**-24, and the squares are summed in float64: the norm the clip factor comes from is accurate
    to far better than the clip margin (a float32 dot product of a large block is not). A block
    whose squares overflow float32 is summed again in float64.
    """
    square_dtype = np.dtype(np.float64) if flat.dtype == np.float64 else np.dtype(np.float32)
    if square_dtype not in scratch:
        scratch[square_dtype] = np.empty(min(_BLOCK, max(flat.size, 1)), dtype=square_dtype)
    buffer = scratch[square_dtype]
    if buffer.size < min(_BLOCK, flat.size):
        buffer = scratch[square_dtype] = np.empty(min(_BLOCK, flat.size), dtype=square_dtype)
    total = 0.0
    for start in _blocks(flat):
        block = flat[start : start + _BLOCK]
        squares = buffer[: block.size]
        with np.errstate(all="ignore"):
            np.multiply(block, block, out=squares, dtype=square_dtype)
            part = float(np.add.reduce(squares, dtype=np.float64))
            if not math.isfinite(part):
                wide = block.astype(np.float64)
                part = float(np.dot(wide, wide))
        if not math.isfinite(part) and not np.isfinite(block).all():
            return math.nan
        total += part
    return total


def privatize(
    data: dict[str, Any],
    *,
    clip_norm: float,
    noise_std: float,
    rng: np.random.Generator,
    per_layer: bool = False,
    global_model: Mapping[str, Any] | None = None,
    in_place: bool = True,
) -> tuple[dict[str, Any], PrivatizeReport]:
    """Clip an update's L2 norm and add Gaussian noise to every value; the work behind :class:`GaussianPrivacy`.

    With ``global_model`` the update is full weights: the difference ``weights - global`` is clipped
    and noised, and ``global + noised difference`` is returned.

    Args:
        data: Layer name to float numpy array (or numpy float scalar). Arrays only ``data`` refers
            to are changed in place when ``in_place`` is true; others are copied.
        clip_norm: L2 bound of the (difference) update; per layer, each layer is bounded by
            ``clip_norm / sqrt(layers)``. A factor of ``1 - CLIP_MARGIN`` is kept in hand.
        noise_std: Standard deviation of the noise added to every value (``noise_multiplier * clip_norm``).
        rng: The generator the noise is drawn from.
        per_layer: Clip each layer on its own.
        global_model: The global model the site received (same layer names and shapes), for full weights.
        in_place: Allow changing arrays only ``data`` refers to.

    Returns:
        The new layer dict (same keys, same order, same dtypes and shapes) and what was done.

    Raises:
        FlipArgumentTypeError: A layer is not a float numpy array (a TypeError).
        FlipInvalidArgument: No values at all; NaN or infinite values; the global model does not
            match; the noise would overflow the layers' dtype (a ValueError).
    """
    _check_layers(data, "update")
    if global_model is not None:
        _check_layers(dict(global_model), "global model")
        if list(global_model) != list(data) and set(global_model) != set(data):
            raise FlipInvalidArgument(
                f"{_OWNER}: refused the full-weights update: its layers are not those of the global model the site "
                "received (a different layer set); nothing of it may leave"
            )
        mismatched = sum(1 for k in data if np.shape(data[k]) != np.shape(global_model[k]))
        if mismatched:
            raise FlipInvalidArgument(
                f"{_OWNER}: refused the full-weights update: {mismatched} of {len(data)} layers differ in shape from "
                "the global model the site received"
            )
    total = sum(int(np.size(v)) for v in data.values())
    if total == 0:
        raise FlipInvalidArgument(f"{_OWNER}: refused the update: it has no values (no layers, or every layer empty)")
    if not (noise_std > 0 and math.isfinite(noise_std)):
        raise FlipInvalidArgument(f"{_OWNER}: the noise standard deviation must be a positive finite number")
    for dtype in {v.dtype for v in data.values()}:
        limit = float(np.finfo(dtype).max)
        if not (clip_norm + _NOISE_TAIL * noise_std < limit):
            raise FlipInvalidArgument(
                f"{_OWNER}: refused the update: clip_norm {clip_norm:.3g} with noise of standard deviation "
                f"{noise_std:.3g} does not fit the update's {dtype} values; use a smaller clip_norm"
            )

    sole = _sole_reference_count()
    work: dict[str, Array] = {}
    for name in list(data):
        exclusive = in_place and _exclusive(data, name, sole)  # before data[name] is held as an argument
        work[name] = _work_array(data[name], exclusive)
    orders = {name: _order(arr) for name, arr in work.items()}
    flats = {name: arr.reshape(-1, order=orders[name]) for name, arr in work.items()}
    if global_model is not None:
        for name, flat in flats.items():
            reference = np.asarray(global_model[name]).reshape(-1, order=orders[name])
            for start in _blocks(flat):
                np.subtract(
                    flat[start : start + _BLOCK],
                    reference[start : start + _BLOCK],
                    out=flat[start : start + _BLOCK],
                    casting="unsafe",
                )

    scratch: dict[np.dtype[Any], Array] = {}
    squares = {name: _sum_of_squares(flat, scratch) for name, flat in flats.items()}
    del scratch
    if any(math.isnan(s) for s in squares.values()):
        bad = sum(1 for s in squares.values() if math.isnan(s))
        what = "once the global model is subtracted " if global_model is not None else ""
        raise FlipInvalidArgument(
            f"{_OWNER}: refused the update: {bad} of {len(data)} layers hold NaN or infinite values {what}; nothing "
            "of it may leave the site (check the training for divergence, e.g. a too-high learning rate)"
        )
    norm = math.sqrt(sum(squares.values()))
    if not math.isfinite(norm):
        raise FlipInvalidArgument(f"{_OWNER}: refused the update: its norm overflows; nothing of it may leave")
    factors: dict[str, float] = {}
    if per_layer:
        layers = sum(1 for f in flats.values() if f.size)
        bound = clip_norm / math.sqrt(layers)
        for name, s in squares.items():
            layer_norm = math.sqrt(s)
            factors[name] = bound * (1 - CLIP_MARGIN) / layer_norm if layer_norm > bound * (1 - CLIP_MARGIN) else 1.0
    else:
        factor = clip_norm * (1 - CLIP_MARGIN) / norm if norm > clip_norm * (1 - CLIP_MARGIN) else 1.0
        factors = dict.fromkeys(flats, factor)

    buffers: dict[np.dtype[Any], Array] = {}
    for name, flat in flats.items():
        dtype = flat.dtype
        noise_dtype = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
        if noise_dtype not in buffers:
            buffers[noise_dtype] = np.empty(min(_BLOCK, max(total, 1)), dtype=noise_dtype)
        buffer = buffers[noise_dtype]
        factor = factors[name]
        ref = np.asarray(global_model[name]).reshape(-1, order=orders[name]) if global_model is not None else None
        for start in _blocks(flat):
            block = flat[start : start + _BLOCK]
            n = block.size
            noise = buffer[:n]
            rng.standard_normal(out=noise, dtype=noise_dtype)
            np.multiply(noise, noise_std, out=noise)
            if dtype == noise_dtype:
                if factor != 1.0:
                    np.multiply(block, factor, out=block)
                np.add(block, noise, out=block)
                if ref is not None:
                    np.add(block, ref[start : start + n], out=block, casting="unsafe")
            else:  # float16: computed in float32, stored back
                wide = block.astype(noise_dtype)
                if factor != 1.0:
                    np.multiply(wide, factor, out=wide)
                np.add(wide, noise, out=wide)
                if ref is not None:
                    np.add(wide, ref[start : start + n], out=wide, casting="unsafe")
                block[...] = wide
        if dtype == np.float16 or ref is not None:
            if not np.isfinite(flat).all():
                raise FlipInvalidArgument(
                    f"{_OWNER}: refused the update: noised values overflow the layers' {dtype} range"
                )

    result: dict[str, Any] = {}
    for name, arr in work.items():
        original = data[name]
        result[name] = arr if isinstance(original, np.ndarray) else arr[()]
    clipped = any(f != 1.0 for f in factors.values())
    return result, PrivatizeReport(norm=norm, clipped=clipped, values=total, layers=len(data))


def clip_factor(norm: float, clip_norm: float) -> float:
    """The factor :func:`privatize` scales an update of L2 norm ``norm`` by (1 when it is within the bound)."""
    bound = clip_norm * (1 - CLIP_MARGIN)
    return bound / norm if norm > bound else 1.0


# ---------------------------------------------------------------------------------------------- the filter


@dataclass
class _Shared:
    """What the two filters of a site (task data and task result chains) share within a job."""

    ledger: BudgetLedger | None = None
    job_request: DPSettings | None = None


_SHARED: dict[tuple[Any, ...], _Shared] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class _TaskState:
    """What the DP filters of one task share through its FLContext (from the task data to the result)."""

    task_id: Any
    global_model: dict[str, Array] | None = None
    round: int | None = None
    num_rounds: int | None = None
    job_requests: list[DPSettings] = field(default_factory=list)
    applied: DPSettings | None = None
    applied_noise: float | None = None


def _as_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        return None
    return int(value)


class GaussianPrivacy(Filter):
    """Clip each model update leaving the site and add calibrated Gaussian noise; keep the budget.

    Put it on both chains of the tasks that train (a task data filter records the global model,
    the round and the planned rounds; the task result filter noises the update). A site's
    ``local/privacy.json`` (``flip-nvflare site-policy render``) places it on every task, with the
    site's settings and its ``minimum``; a job may add its own, which can only make the site's
    stricter: the site's filter applies the strictest of both (more noise, smaller clip norm,
    smaller target epsilon, delta and cap) and the job's own filter then sees that the update was
    already noised at least as strictly and passes it on. Alone (e.g. in the simulator, which
    applies no site filters) the job's filter applies its own settings.

    Results: ``WEIGHT_DIFF`` and ``WEIGHTS`` are noised; ``METRICS`` pass (not covered by the
    guarantee); any other DXO kind, a collection, and a result that is not a DXO but carries more
    than headers are refused. A result whose return code is not OK leaves with its headers only.

    Args:
        clip_norm: L2 bound of a round's update (> 0).
        delta: The guarantee's delta (0 < delta < 1), e.g. 1e-5.
        noise_multiplier: Noise standard deviation over ``clip_norm`` (> 0); 1.0 when neither it nor
            ``target_epsilon`` is given. With ``target_epsilon`` too, the larger of the two
            multipliers is used.
        target_epsilon: Epsilon the job's planned rounds may spend; the noise multiplier is calibrated
            to it with ``dp-accounting`` over the planned rounds (``num_rounds``, else the task's
            ``NUM_ROUNDS`` header). It is also a cap: a job running more rounds than it planned is
            stopped before it spends more.
        max_epsilon: Cap on the epsilon actually spent in the job: the round that would exceed it is
            refused before it is trained.
        per_layer: Clip each layer to ``clip_norm / sqrt(layers)`` (the same total bound).
        accountant: ``"rdp"`` (default) or ``"pld"``.
        num_rounds: The job's planned rounds (e.g. ``"{global_rounds}"``); else read from the task.
        seed: A fixed seed for the noise, accepted only when the job's ``flip_mode`` is ``dev``.
        flip_id: Id of the job's FlipBackend component (which says dev or prod).
        minimum: The site's minimum (keys ``clip_norm``, ``delta``, ``noise_multiplier``,
            ``target_epsilon``, ``max_epsilon``); building fails if the settings are weaker.
        train_tasks: Task names whose task data is checked against the budget before training
            (default ``["train"]``); every result is still checked before it leaves.
        in_place: Allow changing arrays only the task result refers to (default true).

    Raises:
        FlipConfigError: A setting is out of range, weaker than ``minimum``, or incomplete.
        FlipArgumentTypeError: A setting has the wrong JSON type.
    """

    def __init__(
        self,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        max_epsilon: float | None = None,
        per_layer: bool = False,
        accountant: str = "rdp",
        num_rounds: int | str | None = None,
        seed: int | None = None,
        flip_id: str = DEFAULT_FLIP_ID,
        minimum: Mapping[str, Any] | None = None,
        train_tasks: list[str] | None = None,
        in_place: bool = True,
    ) -> None:
        super().__init__()
        if noise_multiplier is None and target_epsilon is None:
            noise_multiplier = DEFAULT_NOISE_MULTIPLIER
        self.settings = settings_from_args(
            _OWNER,
            clip_norm=clip_norm,
            delta=delta,
            noise_multiplier=noise_multiplier,
            target_epsilon=target_epsilon,
            max_epsilon=max_epsilon,
            per_layer=per_layer,
            accountant=accountant,
            num_rounds=num_rounds,
        )
        require_dp_accounting()  # the dp extra must be there wherever the filter is configured
        self.minimum = _minimum_from_args(_OWNER, minimum)
        if self.minimum is not None:
            problems = self.settings.weaker_than(self.minimum)
            if problems:
                raise FlipConfigError(
                    f"{_OWNER}: the settings are weaker than the site's minimum: {'; '.join(problems)}"
                )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise FlipConfigError(f"{_OWNER}: seed must be a whole number >= 0 (dev mode only), got {seed!r}")
        self.seed = seed
        if not isinstance(flip_id, str) or not flip_id:
            raise FlipConfigError(f"{_OWNER}: flip_id must be the id of the FlipBackend component")
        self.flip_id = flip_id
        tasks = ["train"] if train_tasks is None else train_tasks
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise FlipConfigError(f"{_OWNER}: train_tasks must be a list of task names, got {train_tasks!r}")
        self.train_tasks = frozenset(tasks)
        self.in_place = json_bool(_OWNER, "in_place", in_place)
        self._rng: np.random.Generator | None = None
        self._shared: _Shared | None = None

    # ------------------------------------------------------------------ roles and state

    def is_site_filter(self) -> bool:
        """Whether NVFlare built this filter from the site's ``local/privacy.json``."""
        return bool(self.get_prop(FilterContextKey.SOURCE, None) == FilterSource.SITE)

    @property
    def ledger(self) -> BudgetLedger | None:
        """The budget ledger (None before the first check)."""
        return self._shared.ledger if self._shared is not None else None

    def _shared_state(self, fl_ctx: FLContext) -> _Shared:
        """The ledger this filter shares with its twin on the other chain (same job, site, role, settings)."""
        if self._shared is None:
            key = (
                fl_ctx.get_job_id(),
                fl_ctx.get_identity_name(),
                self.is_site_filter(),
                self.settings,
                self.minimum,
            )
            with _SHARED_LOCK:
                self._shared = _SHARED.setdefault(key, _Shared())
        return self._shared

    def _state(self, fl_ctx: FLContext, create: bool) -> _TaskState | None:
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID, None)
        state = fl_ctx.get_prop(_TASK_PROP, None)
        if isinstance(state, _TaskState) and state.task_id == task_id:
            return state
        if not create:
            return None
        state = _TaskState(task_id=task_id)
        fl_ctx.set_prop(_TASK_PROP, state, private=True, sticky=False)
        return state

    def _effective(self, state: _TaskState | None, fl_ctx: FLContext) -> DPSettings:
        settings = self.settings
        if self.minimum is not None:
            settings = settings.stricter(self.minimum)
        if self.is_site_filter():
            requests = list(state.job_requests) if state is not None else []
            last = self._shared_state(fl_ctx).job_request
            if not requests and last is not None:
                requests = [last]
            for request in requests:
                settings = settings.stricter(request)
        if settings.target_epsilon is not None:  # a target for the whole job is also a cap on what it spends
            settings = replace(settings, max_epsilon=_min_or_none(settings.max_epsilon, settings.target_epsilon))
        return settings

    def _planned_rounds(self, settings: DPSettings, state: _TaskState | None) -> int | None:
        return _max_or_none(settings.num_rounds, state.num_rounds if state is not None else None)

    def noise_multiplier(self, settings: DPSettings, rounds: int | None) -> float:
        """The noise multiplier ``settings`` give over ``rounds`` planned rounds.

        Raises:
            FlipConfigError: A target epsilon is set but the planned rounds are unknown.
        """
        candidates = [settings.noise_multiplier] if settings.noise_multiplier is not None else []
        if settings.target_epsilon is not None:
            if rounds is None:
                raise FlipConfigError(
                    f"{_OWNER}: target_epsilon needs the job's planned rounds: pass num_rounds "
                    '(e.g. "{global_rounds}") or use a controller that sends NUM_ROUNDS with the task'
                )
            candidates.append(
                calibrate_noise_multiplier(settings.target_epsilon, settings.delta, rounds, settings.accountant)
            )
        return max(candidates)

    def _budget(self, settings: DPSettings, fl_ctx: FLContext) -> BudgetLedger:
        shared = self._shared_state(fl_ctx)
        with _SHARED_LOCK:
            if shared.ledger is None:
                shared.ledger = BudgetLedger(settings.delta, settings.accountant, settings.max_epsilon)
            else:
                shared.ledger.tighten(settings.delta, settings.max_epsilon)
            return shared.ledger

    def _generator(self, fl_ctx: FLContext) -> np.random.Generator:
        if self._rng is None:
            if self.seed is not None:
                mode = _flip_mode(fl_ctx, self.flip_id)
                if mode is not FlipMode.DEV:
                    raise FlipConfigError(
                        f"{_OWNER}: a fixed seed makes the noise predictable and is accepted only in dev mode; "
                        f"this job's flip_mode is {mode.value if mode else 'unknown'}: remove 'seed'"
                    )
                self._rng = dev_generator(self.seed, fl_ctx.get_identity_name())
            else:
                self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))
        return self._rng

    # ------------------------------------------------------------------ NVFlare entry point

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Task data (``in``): record the global model and check the budget; task results (``out``): noise.

        Raises:
            BudgetExhausted: The round would exceed the epsilon cap (the task is not trained).
            FlipInvalidArgument: The result cannot be filtered (see the class); nothing leaves.
            FlipArgumentTypeError: A layer is not a float array; nothing leaves.
            FlipConfigError: A fixed seed outside dev mode, or a target epsilon without planned rounds.
        """
        chain = self.get_prop(FilterContextKey.CHAIN_TYPE, None)
        if chain == FilterChainType.TASK_DATA_CHAIN:
            return self._task_data(shareable, fl_ctx)
        if chain is None and fl_ctx.get_prop(FLContextKey.FILTER_DIRECTION, None) == FilterKey.IN:
            return self._task_data(shareable, fl_ctx)
        return self._task_result(shareable, fl_ctx)

    def _task_data(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        state = self._state(fl_ctx, create=True)
        assert state is not None
        state.round = _as_count(shareable.get_header(AppConstants.CURRENT_ROUND, None))
        state.num_rounds = _max_or_none(
            state.num_rounds, _as_count(shareable.get_header(AppConstants.NUM_ROUNDS, None)) or None
        )
        if state.global_model is None:
            try:
                dxo = from_shareable(shareable)
            except Exception:
                dxo = None
            if dxo is not None and dxo.data_kind == DataKind.WEIGHTS and isinstance(dxo.data, dict):
                state.global_model = {
                    k: np.array(v, copy=True)
                    for k, v in dxo.data.items()
                    if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f"
                }
        if not self.is_site_filter():
            state.job_requests.append(self.settings)
        task_name = fl_ctx.get_prop(FLContextKey.TASK_NAME, None)
        if task_name in self.train_tasks:
            settings = self._effective(state, fl_ctx)
            z = self.noise_multiplier(settings, self._planned_rounds(settings, state))
            self._check_budget(fl_ctx, settings, z, state.round)
        return shareable

    def _check_budget(self, fl_ctx: FLContext, settings: DPSettings, z: float, round_: int | None) -> float:
        ledger = self._budget(settings, fl_ctx)
        try:
            return ledger.check(z, round_)
        except BudgetExhausted as exc:
            self.log_error(fl_ctx, str(exc), fire_event=False)
            _report(
                fl_ctx,
                {
                    "kind": REPORT_EXHAUSTED,
                    "round": round_,
                    "epsilon_spent": ledger.epsilon,
                    "epsilon_projected": ledger.projected(z),
                    "epsilon_cap": ledger.cap,
                    "delta": ledger.delta,
                    "releases": len(ledger.releases),
                },
            )
            raise

    def _task_result(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if strip_failed_result(self, shareable, fl_ctx):
            return shareable
        try:
            dxo = from_shareable(shareable)
        except Exception:
            payload = [k for k in shareable if k != ReservedHeaderKey.HEADERS]
            if payload:
                raise FlipInvalidArgument(
                    f"{_OWNER}: refused a task result that is not a DXO but carries {len(payload)} entries besides "
                    "its headers: it cannot be checked, so it may not leave the site"
                ) from None
            return shareable
        if dxo.data_kind in _PASS_KINDS:
            return shareable
        if dxo.data_kind not in _MODEL_KINDS:
            raise FlipInvalidArgument(
                f"{_OWNER}: refused a DXO of kind {str(dxo.data_kind)[:32]!r}: only WEIGHT_DIFF and WEIGHTS updates "
                "can be noised (and METRICS pass); nothing of it may leave the site"
            )
        state = self._state(fl_ctx, create=False)
        if not self.is_site_filter() and state is not None and state.applied is not None:
            return self._already_applied(state, fl_ctx, shareable)
        filtered = self._noise(dxo, state, fl_ctx)
        return filtered.update_shareable(shareable)

    def _already_applied(self, state: _TaskState, fl_ctx: FLContext, shareable: Shareable) -> Shareable:
        applied, z_applied = state.applied, state.applied_noise
        assert applied is not None and z_applied is not None
        mine = self._effective(state, fl_ctx)
        z_mine = self.noise_multiplier(mine, self._planned_rounds(mine, state))
        if applied.clip_norm <= mine.clip_norm and z_applied >= z_mine * (1 - 1e-12) and applied.delta <= mine.delta:
            self.log_info(
                fl_ctx,
                "The site's GaussianPrivacy already noised this update at least as strictly as this job asks "
                f"(noise multiplier {z_applied:.4g}, clip norm {applied.clip_norm:.4g}); passed on unchanged.",
                fire_event=False,
            )
            return shareable
        raise FlipInvalidArgument(
            f"{_OWNER}: the site noised this update less strictly than this job asks (noise multiplier "
            f"{z_applied:.4g} < {z_mine:.4g} or clip norm {applied.clip_norm:.4g} > {mine.clip_norm:.4g}); "
            "nothing of it may leave"
        )

    def _noise(self, dxo: DXO, state: _TaskState | None, fl_ctx: FLContext) -> DXO:
        settings = self._effective(state, fl_ctx)
        if self.is_site_filter() and state is not None and state.job_requests:
            self._shared_state(fl_ctx).job_request = state.job_requests[-1]
            for request in state.job_requests:
                weaker = self.settings.stricter(self.minimum or self.settings)
                if request.weaker_than(weaker):
                    self.log_warning(
                        fl_ctx,
                        "The job's own GaussianPrivacy asks for weaker settings than this site's policy "
                        f"({'; '.join(request.weaker_than(weaker))}); the site's settings apply.",
                        fire_event=False,
                    )
        round_ = state.round if state is not None else None
        z = self.noise_multiplier(settings, self._planned_rounds(settings, state))
        self._check_budget(fl_ctx, settings, z, round_)
        global_model = None
        if dxo.data_kind == DataKind.WEIGHTS:
            if state is None or not state.global_model:
                raise FlipInvalidArgument(
                    f"{_OWNER}: refused a full-weights (WEIGHTS) update: the global model this site received is not "
                    "known, so the update cannot be made a difference; put GaussianPrivacy on the task data filters "
                    "of this task too, or send WEIGHT_DIFF"
                )
            global_model = state.global_model
        rng = self._generator(fl_ctx)
        data, report = privatize(
            dxo.data,
            clip_norm=settings.clip_norm,
            noise_std=z * settings.clip_norm,
            rng=rng,
            per_layer=settings.per_layer,
            global_model=global_model,
            in_place=self.in_place,
        )
        ledger = self._budget(settings, fl_ctx)
        release = ledger.record(round_, z, settings.clip_norm)
        self._write_ledger(fl_ctx)
        dxo.data = data
        update = (
            "WEIGHT_DIFF" if global_model is None else "WEIGHTS as the difference against the global model received"
        )
        dxo.set_meta_prop(
            META_KEY,
            {
                "update": update,
                "noise_multiplier": z,
                "clip_norm": settings.clip_norm,
                "per_layer": settings.per_layer,
                "delta": ledger.delta,
                "epsilon_spent": release.epsilon,
                "accountant": ledger.accountant,
            },
        )
        if state is not None:
            state.applied = replace(settings, noise_multiplier=z)
            state.applied_noise = z
        cap = f" of the cap {ledger.cap:.4g}" if ledger.cap is not None else ""
        self.log_info(
            fl_ctx,
            f"Differential privacy: round {round_ if round_ is not None else '?'}: {update} clipped to L2 "
            f"{settings.clip_norm:.4g}{' per layer' if settings.per_layer else ''} (norm {report.norm:.4g}, "
            f"{'clipped' if report.clipped else 'within the bound'}), noise multiplier {z:.4g}; epsilon spent "
            f"{release.epsilon:.4g}{cap} at delta {ledger.delta:.3g} after {len(ledger.releases)} release(s) "
            f"({ledger.accountant}).",
            fire_event=False,
        )
        _report(fl_ctx, _release_report(release, ledger, settings, len(ledger.releases)))
        return dxo

    def _write_ledger(self, fl_ctx: FLContext) -> None:
        """Write the site's ledger into its run folder before the release leaves (fail closed)."""
        from flip_nvflare.workspace import job_run_dir, write_atomically

        ledger = self._shared_state(fl_ctx).ledger
        assert ledger is not None
        if fl_ctx.get_engine() is None:  # not inside a job (a benchmark, a notebook): no run folder to write to
            return
        target = job_run_dir(fl_ctx) / LEDGER_FILE
        body = {"site": fl_ctx.get_identity_name(), **ledger.summary()}
        write_atomically(target, json.dumps(body, indent=1) + "\n")


def _release_report(release: Release, ledger: BudgetLedger, settings: DPSettings, releases: int) -> dict[str, Any]:
    return {
        "kind": REPORT_RELEASE,
        "round": release.round,
        "epsilon_spent": release.epsilon,
        "epsilon_cap": ledger.cap,
        "delta": ledger.delta,
        "noise_multiplier": release.noise_multiplier,
        "clip_norm": release.clip_norm,
        "per_layer": settings.per_layer,
        "accountant": ledger.accountant,
        "releases": releases,
    }


def dev_generator(seed: int, site: object) -> np.random.Generator:
    """The dev-mode generator of a fixed ``seed`` at ``site`` (sites of one job draw different noise)."""
    name = site if isinstance(site, str) else ""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))])))


def _flip_mode(fl_ctx: FLContext, flip_id: str) -> FlipMode | None:
    from flip_nvflare.backend import FlipBackend

    engine = fl_ctx.get_engine()
    component = engine.get_component(flip_id) if engine is not None else None
    return component.mode if isinstance(component, FlipBackend) else None


def _report(fl_ctx: FLContext, payload: Mapping[str, Any]) -> None:
    """Fire a privacy report to the server (a federated event; numbers and fixed words only)."""
    engine = fl_ctx.get_engine()
    if engine is None:
        return
    data = Shareable()
    data.update({k: v for k, v in payload.items()})
    with engine.new_context() as event_ctx:
        event_ctx.set_prop(FLContextKey.EVENT_DATA, data, private=True, sticky=False)
        event_ctx.set_prop(FLContextKey.EVENT_SCOPE, value=EventScope.FEDERATION, private=True, sticky=False)
        engine.fire_event(PRIVACY_REPORT_EVENT, event_ctx)


def settings_summary(settings: DPSettings) -> dict[str, Any]:
    """``settings`` as JSON-able numbers (for logs and the run summary)."""
    return asdict(settings)
