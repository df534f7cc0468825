"""The "largest percentile to share" privacy filter, exact and lean.

Shokri and Shmatikov, "Privacy-preserving deep learning", CCS '15: of a model update, only the
changes whose absolute value reaches a percentile of all absolute changes are shared, and those
are clipped to ``[-gamma, gamma]``.

:class:`PercentilePrivacy` takes the constructor arguments of NVFlare's stock
``nvflare.app_common.filters.percentile_privacy.PercentilePrivacy`` and produces its output bit for
bit (dtypes included), but it neither concatenates every absolute value into one big array nor
makes new arrays for every layer:

* the percentile cutoff comes from the two order statistics ``numpy.percentile`` interpolates
  between, found exactly without a full copy: a random sample guesses two bounds around them, one
  block-wise pass counts the values outside the bounds and copies out the few between them, and
  np.partition finishes. If the guess misses (it almost never does), a radix selection over the
  bit patterns of the absolute values (which order like the values for IEEE floats) takes over.
  The order statistics are then interpolated with numpy's own "linear" formula and dtype rules;
* arrays that belong to the task result alone are scaled, zeroed and clipped in place, one block
  at a time.

What it adds to the stock filter: an ``off`` switch, an optional site minimum
(``min_percentile``, ``max_gamma``) that makes a weaker setting a configuration error, and
fail-closed argument checks: the stock filter silently shares the unfiltered update when
``percentile`` or ``gamma`` is out of range; this one refuses to be built. Where the stock filter
would let more leave than its settings say, this one fails closed (see :class:`PercentilePrivacy`):
a result whose return code is not OK leaves without its payload, an update holding NaN or
infinite values is refused, and a filter carrying a site minimum does not let the job's step count
widen the clip bound.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

from flip_nvflare.args import json_bool
from flip_nvflare.errors import FlipArgumentTypeError, FlipConfigError, FlipInvalidArgument

__all__ = ["PercentilePrivacy", "withhold_payload"]

Array = np.ndarray[Any, Any]

# Elements handled per step of a block-wise pass. Big enough to amortise numpy's per-call cost,
# small enough for the scratch buffers (a few per block) to stay in the CPU cache.
_BLOCK = 1 << 16
# Width in bits of one radix digit (and of the histogram index).
_DIGIT_BITS = 16
# Updates with at most this many values are handled with one small concatenated copy.
_COPY_LIMIT = 1 << 20
# At most this many values (a few MiB) are copied out to finish a selection with np.partition;
# a radix bucket with more is refined by another histogram pass instead.
_COLLECT_LIMIT = 1 << 20
# Size of the random sample that guesses the bounds around the wanted ranks, how many standard
# deviations of the sample's rank error the bounds add on each side, and the sample's fixed seed
# (only speed depends on the sample, never the result).
_SAMPLE_SIZE = 1 << 16
_BRACKET_SIGMAS = 6.0
_SAMPLE_SEED = 20151012
# Signed integer types with the width of each supported float type, to view bit patterns.
_INT_OF_WIDTH: dict[int, type[np.signedinteger[Any]]] = {2: np.int16, 4: np.int32, 8: np.int64}


class PercentilePrivacy(DXOFilter):
    """Share only the largest absolute changes of a model update, clipped to ``[-gamma, gamma]``.

    A drop-in replacement for NVFlare's stock ``PercentilePrivacy`` (same arguments, same output bit
    for bit), typically configured as a ``task_result_filter`` on ``train`` results of a client,
    or rendered into a site's ``local/privacy.json`` by ``flip-nvflare site-policy render``.

    For each WEIGHT_DIFF (and, like the stock filter, WEIGHTS) DXO: every value is divided by the
    DXO's ``NUM_STEPS_CURRENT_ROUND`` meta (default 1); values whose absolute value is below the
    ``percentile``-th percentile of all absolute values are set to 0; the rest are clipped to
    ``[-gamma, gamma]``; everything is multiplied back by the number of steps. Scalar (0-d)
    entries count towards the percentile but are neither zeroed nor clipped.

    Arrays that only the task result references (they own their memory, are writeable, and no other
    Python object refers to them) are changed in place; any other array is left untouched and a
    filtered copy is shared instead. Set ``in_place=False`` to always copy.

    Where it differs from the stock filter (it fails closed wherever the stock one lets more leave):

    * **Failed results.** NVFlare's ``DXOFilter.process`` (so the stock filter, and the stock
      ``DXOBlocker`` too) returns a result whose return code is not OK untouched, DXO and all. This
      filter instead removes every entry of such a result except its headers (the return code and,
      e.g., the sanitized ``exception`` header stay; the DXO content type goes), whatever the DXO's
      kind, ``data_kinds`` and ``off``, and logs a warning. A failed result carries no weights.
    * **NaN or infinite values.** A NaN anywhere makes the stock cutoff NaN, which zeroes nothing,
      so every value is shared (clipped); infinities can do the same. This filter refuses such an
      update with a :class:`FlipInvalidArgument` giving how many layers hold them (no names, no
      values), before changing anything; NVFlare then sends a ``TASK_RESULT_FILTER_ERROR`` reply
      without data. Values that only become infinite when divided by a step count below 1 are
      refused the same way.
    * **The step count.** Dividing by ``steps`` and multiplying back makes the clip bound of the
      shared changes ``gamma * steps``; which changes are zeroed does not depend on it (scaling
      keeps their order). A filter carrying a site minimum (``min_percentile`` or ``max_gamma`` set,
      as every filter ``flip-nvflare site-policy render`` writes does) therefore uses ``steps = 1``
      whatever the job reports: every shared change is within ``[-gamma, gamma]``, and its output
      is the stock filter's for an update without ``NUM_STEPS_CURRENT_ROUND``. A reported count
      that is not a positive finite number is still refused. Without a site minimum the reported
      count is used, as in the stock filter.

    Args:
        percentile: Only absolute changes at or above this percentile (0..100) are shared.
            Defaults to 10.
        gamma: Clip bound (> 0) for the shared changes. Defaults to 0.01.
        data_kinds: DXO data kinds to filter, a subset of ``["WEIGHT_DIFF", "WEIGHTS"]``.
            Defaults to both, like the stock filter.
        off: If true, the filter passes OK results through unchanged (failed results still lose
            their payload). Cannot be combined with a site minimum.
        min_percentile: Site minimum: building the filter fails if ``percentile`` is below it.
        max_gamma: Site minimum: building the filter fails if ``gamma`` is above it.
        in_place: Allow changing arrays that only the task result references. Defaults to True.

    Raises:
        FlipArgumentTypeError: An argument has the wrong type (a TypeError; for ``off`` and
            ``in_place`` also a FlipConfigError).
        FlipConfigError: An argument is out of range or weaker than the site minimum (a ValueError).
    """

    def __init__(
        self,
        percentile: float = 10,
        gamma: float = 0.01,
        data_kinds: list[str] | None = None,
        off: bool = False,
        min_percentile: float | None = None,
        max_gamma: float | None = None,
        in_place: bool = True,
    ) -> None:
        if data_kinds is not None and not isinstance(data_kinds, list):
            raise FlipArgumentTypeError(
                f"PercentilePrivacy: data_kinds must be a list of DXO data kinds, got {data_kinds!r}"
            )
        if not data_kinds:
            data_kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=data_kinds)
        # Kept exactly as given: like numpy.percentile, a Python number and a numpy scalar promote
        # differently, and the output must match the stock filter's for the same arguments.
        self.percentile = percentile
        self.gamma = gamma
        self.off = off
        self.min_percentile = min_percentile
        self.max_gamma = max_gamma
        self.in_place = in_place
        self._check_settings()

    def _check_settings(self) -> None:
        """Validate the settings; also run before each use, so a changed attribute fails closed."""
        percentile, gamma, off, in_place = self.percentile, self.gamma, self.off, self.in_place
        min_percentile, max_gamma = self.min_percentile, self.max_gamma
        _check_real("percentile", percentile)
        if not 0 <= percentile <= 100:
            raise FlipConfigError(
                f"PercentilePrivacy: percentile must be between 0 and 100, got {percentile!r}; "
                "e.g. 10 shares only changes at or above the 10th percentile of absolute changes"
            )
        _check_real("gamma", gamma)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise FlipConfigError(
                f"PercentilePrivacy: gamma must be a positive finite number, got {gamma!r}; "
                "e.g. 0.01 clips every shared change to [-0.01, 0.01]"
            )
        json_bool("PercentilePrivacy", "off", off)
        json_bool("PercentilePrivacy", "in_place", in_place)
        if min_percentile is not None:
            _check_real("min_percentile", min_percentile)
            if not 0 <= min_percentile <= 100:
                raise FlipConfigError(
                    f"PercentilePrivacy: min_percentile must be between 0 and 100, got {min_percentile!r}"
                )
            if percentile < min_percentile:
                raise FlipConfigError(
                    f"PercentilePrivacy: percentile {percentile!r} is below the site minimum "
                    f"{min_percentile!r}; set percentile to at least {min_percentile!r}"
                )
        if max_gamma is not None:
            _check_real("max_gamma", max_gamma)
            if not (max_gamma > 0 and math.isfinite(max_gamma)):
                raise FlipConfigError(
                    f"PercentilePrivacy: max_gamma must be a positive finite number, got {max_gamma!r}"
                )
            if gamma > max_gamma:
                raise FlipConfigError(
                    f"PercentilePrivacy: gamma {gamma!r} is above the site maximum {max_gamma!r}; "
                    f"set gamma to at most {max_gamma!r}"
                )
        if off and (min_percentile is not None or max_gamma is not None):
            raise FlipConfigError(
                "PercentilePrivacy: a filter that carries a site minimum (min_percentile or max_gamma) "
                "cannot be switched off; remove 'off' or the minimum"
            )

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Filter a task result: OK results as NVFlare's DXOFilter does, failed ones lose their payload.

        Args:
            shareable: The task result leaving the site.
            fl_ctx: The FL context (for logging).

        Returns:
            The same Shareable: filtered if its return code is OK, else with its headers only.
        """
        if strip_failed_result(self, shareable, fl_ctx):
            return shareable
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Filter one WEIGHT_DIFF or WEIGHTS DXO.

        Args:
            dxo: The DXO to filter; its ``data`` maps layer names to numpy arrays or scalars.
            shareable: The task result the DXO belongs to.
            fl_ctx: The FL context (not used).

        Returns:
            The same DXO with filtered data, or None when the filter is off.

        Raises:
            FlipArgumentTypeError: A layer is not a real-valued numpy array or scalar (a TypeError).
            FlipInvalidArgument: The DXO has no values, holds NaN or infinite values, or its
                NUM_STEPS_CURRENT_ROUND meta is not a positive finite number (a ValueError).
        """
        self._check_settings()
        if self.off:
            return None
        data = dxo.data
        if not isinstance(data, dict):
            raise FlipArgumentTypeError(
                f"PercentilePrivacy: DXO data must be a dict of arrays, got {type(data).__name__}"
            )
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        if not (_is_real(steps) and 0 < steps < math.inf):
            raise FlipInvalidArgument(
                f"PercentilePrivacy: the DXO meta '{MetaKey.NUM_STEPS_CURRENT_ROUND}' must be a positive "
                f"number, got {steps!r}; set it to the number of local steps, or leave it out"
            )
        if self.min_percentile is not None or self.max_gamma is not None:
            steps = 1  # a site filter: the job's step count may not widen the clip bound (gamma * steps)
        dxo.data = _filter_layers(data, self.percentile, self.gamma, steps, in_place=self.in_place)
        return dxo


def _filter_layers(
    data: dict[str, Any], percentile: float, gamma: float, steps: float, in_place: bool = True
) -> dict[str, Any]:
    """Apply the percentile policy to a dict of layers; the work behind :class:`PercentilePrivacy`.

    Args:
        data: Layer name to numpy array or numpy scalar. Arrays only this dict references may be
            changed in place when ``in_place`` is true.
        percentile: Percentile (0..100) of the absolute values below which values become 0.
        gamma: Clip bound for the remaining values.
        steps: Number of local steps the update was divided by (``NUM_STEPS_CURRENT_ROUND``).
        in_place: Allow changing arrays that only ``data`` references.

    Returns:
        A new dict with the same keys in the same order and the filtered values.

    Raises:
        FlipArgumentTypeError: A layer is not a real-valued numpy array or scalar (a TypeError).
        FlipInvalidArgument: There are no values at all, or some are NaN or infinite (before or
            after the division by ``steps``) (a ValueError).
    """
    for name in data:
        _check_layer(name, data[name])
    _refuse_non_finite(list(data.values()), len(data), divided=False)
    sole = _sole_reference_count()
    scaled: dict[str, Any] = {}
    pieces: list[Array] = []
    for name in list(data):
        exclusive = in_place and _item_reference_count(data, name) <= sole
        value = data[name]
        if np.ndim(value) == 0:
            quotient = value / steps
            scaled[name] = quotient
            pieces.append(np.reshape(quotient, 1))
            continue
        if exclusive and _can_scale_in_place(value, steps):
            np.true_divide(value, steps, out=value)
            quotient = value
        else:
            quotient = value / steps
            if not (quotient.flags.c_contiguous or quotient.flags.f_contiguous):
                quotient = np.ascontiguousarray(quotient)
        scaled[name] = quotient
        pieces.append(quotient.ravel(order="K"))

    if steps < 1:  # dividing by less than 1 can overflow to inf
        _refuse_non_finite(list(scaled.values()), len(data), divided=True)
    total = sum(p.size for p in pieces)
    if total == 0:
        raise FlipInvalidArgument(
            "PercentilePrivacy: the update has no values (every layer is empty); nothing to filter"
        )
    common = functools.reduce(np.promote_types, [p.dtype for p in pieces])  # np.concatenate's dtype
    cutoff = _percentile_of_abs(pieces, common, total, percentile)

    result: dict[str, Any] = {}
    for name, quotient in scaled.items():
        if np.ndim(quotient) == 0:
            result[name] = quotient * steps
        else:
            result[name] = _zero_clip_rescale(quotient, cutoff, gamma, steps)
    return result


def strip_failed_result(component: FLComponent, shareable: Shareable, fl_ctx: FLContext) -> bool:
    """If ``shareable`` is a failed result, leave it only its headers (logged when it had more); say whether it was.

    Every filter on what leaves a site starts with this: a failed result never carries a payload out.
    """
    return_code = shareable.get_return_code()
    if return_code == ReturnCode.OK:
        return False
    removed = withhold_payload(shareable)
    if removed:
        component.log_warning(
            fl_ctx,
            f"A task result with return code {str(return_code)[:64]!r} carried a payload ({removed} entries); it was "
            "removed: a failed result leaves the site with its headers only.",
            fire_event=False,
        )
    return True


def withhold_payload(result: Shareable) -> int:
    """Remove everything from ``result`` but its headers, in place: what a failed result may carry out.

    The return code and other headers (e.g. the sanitized ``exception`` header) stay; the DXO
    content-type header goes with the DXO.

    Args:
        result: A task result (a Shareable: a dict whose ``__headers__`` entry holds the headers).

    Returns:
        How many entries were removed (0 if there was nothing but headers).
    """
    removed = 0
    for key in [k for k in result if k != ReservedHeaderKey.HEADERS]:
        del result[key]
        removed += 1
    headers = result.get(ReservedHeaderKey.HEADERS)
    if isinstance(headers, dict) and ReservedHeaderKey.CONTENT_TYPE in headers:
        del headers[ReservedHeaderKey.CONTENT_TYPE]
    return removed


def _refuse_non_finite(layers: list[Any], count: int, *, divided: bool) -> None:
    """Raise if any layer holds a NaN or an infinity, giving how many layers do (no names, no values)."""
    bad = sum(1 for value in layers if not _all_finite(value))
    if bad:
        when = " once divided by the DXO meta NUM_STEPS_CURRENT_ROUND" if divided else ""
        raise FlipInvalidArgument(
            f"PercentilePrivacy: refused the update: {bad} of {count} layers hold NaN or infinite values{when}; "
            "nothing of it may leave the site (check the training for divergence, e.g. a too-high learning rate)"
        )


def _all_finite(value: Any) -> bool:
    """Whether a numpy array or scalar holds no NaN or infinity, without a temporary of its size."""
    if value.dtype.kind != "f" or value.size == 0:
        return True
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(value)):  # one pass: a NaN or an infinity would make the sum non-finite
            return True
        # the sum may only have overflowed: look at the extremes (NaN propagates through min and max)
        return bool(np.isfinite(np.min(value)) and np.isfinite(np.max(value)))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_real(name: str, value: object) -> None:
    if not _is_real(value):
        raise FlipArgumentTypeError(f"PercentilePrivacy: {name} must be a number, got {value!r}")
    if math.isnan(value):  # type: ignore[arg-type]
        raise FlipInvalidArgument(f"PercentilePrivacy: {name} must be a number, got NaN")


def _check_layer(name: str, value: object) -> None:
    if isinstance(value, (np.ndarray, np.generic)):
        kind = value.dtype.kind
        if kind in "biuf":
            return
        what = f"numpy dtype {value.dtype}"
    else:
        what = type(value).__module__ + "." + type(value).__qualname__
    raise FlipArgumentTypeError(
        f"PercentilePrivacy: layer {name!r} is {what}; the filter takes real-valued numpy arrays only "
        "(send numpy parameters, e.g. params converted to numpy before they leave the executor)"
    )


def _item_reference_count(container: dict[str, Any], key: str) -> int:
    return sys.getrefcount(container[key])


def _sole_reference_count() -> int:
    """Reference count :func:`_item_reference_count` sees for an object only a dict refers to."""
    probe = {"probe": np.empty(0)}
    return _item_reference_count(probe, "probe")


def _can_scale_in_place(value: Array, steps: float) -> bool:
    """Whether ``value / steps`` (and later ``clip(...) * steps``) can be written into ``value``."""
    flags = value.flags
    if not (flags.owndata and flags.writeable and (flags.c_contiguous or flags.f_contiguous)):
        return False
    empty = np.empty(0, dtype=value.dtype)
    return bool((empty / steps).dtype == value.dtype)


def _percentile_of_abs(pieces: list[Array], common: np.dtype[Any], total: int, percentile: float) -> Any:
    """``np.percentile(np.concatenate([np.abs(p) for p in pieces]), percentile)``, without the copy."""
    lower, upper, gamma = _interpolation_plan(total, percentile)
    ranks = sorted({lower, upper})
    values: dict[int, Any] | None
    if common.kind == "f" and common.itemsize in _INT_OF_WIDTH and total > _COPY_LIMIT:
        resolved, values = _bracket_select(pieces, common, total, ranks)
        if not resolved:
            values = _radix_select(pieces, common, ranks)
    else:
        values = _select_by_copy(pieces, common, ranks)
    if values is None:  # a NaN anywhere makes numpy's percentile NaN
        return common.type(np.nan)
    return _lerp(values[lower], values[upper], gamma)


def _interpolation_plan(total: int, percentile: float) -> tuple[int, int, Any]:
    """Ranks and weight numpy's "linear" percentile interpolates between, computed the same way."""
    quantile = np.asarray(np.true_divide(percentile, 100))
    virtual = np.asarray((total - 1) * quantile)
    if virtual >= total - 1:
        lower = upper = total - 1
        previous = -1  # numpy indexes the last element as -1 and derives the weight from that
    elif virtual < 0:
        lower = upper = previous = 0
    else:
        previous = int(np.floor(virtual))
        lower, upper = previous, previous + 1
    gamma: Any = np.asarray(virtual - np.intp(previous), dtype=virtual.dtype)
    if type(percentile) in (int, float):  # numpy promotes a Python percentile weakly
        gamma = float(gamma)
    return lower, upper, gamma


def _lerp(below: Any, above: Any, weight: Any) -> Any:
    """Interpolate like numpy's percentile: from below if the weight is under 0.5, else from above."""
    step = above - below
    value = np.add(below, step * weight)
    if weight >= 0.5:
        value = np.subtract(above, step * (1 - weight), dtype=np.asarray(value).dtype, casting="unsafe")
    return value


def _blocks(pieces: list[Array]) -> Iterator[Array]:
    """Yield consecutive 1-D blocks of at most ``_BLOCK`` elements from every piece."""
    for piece in pieces:
        for start in range(0, piece.size, _BLOCK):
            yield piece[start : start + _BLOCK]


def _abs_bit_blocks(pieces: list[Array], common: np.dtype[Any]) -> Iterator[Array]:
    """Yield the bit patterns of the absolute values, block by block, as signed integers.

    Absolute values of IEEE floats have a clear sign bit, so their bit patterns read as signed
    integers sort exactly like the values, with every NaN above +inf. Each block is a view of one
    scratch buffer, valid until the next block is asked for.
    """
    scratch = np.empty(_BLOCK, dtype=common)
    int_type = _INT_OF_WIDTH[common.itemsize]
    for block in _blocks(pieces):
        out = scratch[: block.size]
        np.abs(block, out=out)
        yield out.view(int_type)


def _inf_bits(common: np.dtype[Any]) -> int:
    return int(np.array(np.inf, dtype=common).view(_INT_OF_WIDTH[common.itemsize]))


def _select_by_copy(pieces: list[Array], common: np.dtype[Any], ranks: list[int]) -> dict[int, Any] | None:
    """Exact order statistics of the absolute values via one concatenated copy (small updates)."""
    values = np.concatenate([np.abs(p) for p in pieces]).astype(common, copy=False)
    if values.dtype.kind == "f" and np.isnan(values).any():
        return None
    values.partition(ranks)
    return {r: values[r] for r in ranks}


def _bracket_select(
    pieces: list[Array], common: np.dtype[Any], total: int, ranks: list[int]
) -> tuple[bool, dict[int, Any] | None]:
    """Exact order statistics of the absolute values, from a bracket guessed on a random sample.

    A sample of the absolute values gives two bounds that very likely enclose the wanted ranks;
    one pass counts the values below, at and above the bounds and copies out only those strictly
    between them, where np.partition finishes. The result is exact whatever the sample: when the
    bounds miss a rank or too many values fall between them, nothing is guessed and the caller
    falls back to :func:`_radix_select`.

    Returns:
        ``(True, values)`` with rank to value (None if any value is NaN), or ``(False, None)``.
    """
    int_type = _INT_OF_WIDTH[common.itemsize]
    inf_bits = _inf_bits(common)
    sample = _sample_abs_bits(pieces, common, total)
    if sample[-1] > inf_bits:
        return True, None
    size = sample.size
    fraction_lo, fraction_hi = ranks[0] / total, ranks[-1] / total
    slack = int(_BRACKET_SIGMAS * math.sqrt(size * max(fraction_lo * (1 - fraction_lo), 1 / size))) + 8
    below_index = math.floor(fraction_lo * size) - slack
    above_index = math.ceil(fraction_hi * size) + slack
    low = int(sample[below_index]) if below_index >= 0 else -1  # -1: no value is below
    high = int(sample[above_index]) if above_index < size else inf_bits

    n_lt_low = n_le_low = n_lt_high = n_le_high = n_between = 0
    between: list[Array] = []
    scratch_a = np.empty(_BLOCK, dtype=bool)
    scratch_b = np.empty(_BLOCK, dtype=bool)
    for bits in _abs_bit_blocks(pieces, common):
        n = bits.size
        if bits.max() > inf_bits:
            return True, None
        a, b = scratch_a[:n], scratch_b[:n]
        n_lt_low += int(np.count_nonzero(np.less(bits, low, out=a)))
        n_le_high += int(np.count_nonzero(np.less_equal(bits, high, out=a)))
        n_le_low += int(np.count_nonzero(np.less_equal(bits, low, out=a)))
        if high != low:
            n_lt_high += int(np.count_nonzero(np.less(bits, high, out=b)))
            inside = np.greater(b, a, out=b)  # below high and not at or below low
            chosen = bits[inside]
            n_between += chosen.size
            if n_between > _COLLECT_LIMIT:
                return False, None
            between.append(chosen)
    if high == low:
        n_lt_high = n_le_low

    found: dict[int, Any] = {}
    wanted: dict[int, int] = {}
    for rank in ranks:
        if n_lt_low <= rank < n_le_low:
            found[rank] = _value_of_bits(low, int_type, common)
        elif n_le_low <= rank < n_lt_high:
            wanted[rank] = rank - n_le_low
        elif n_lt_high <= rank < n_le_high:
            found[rank] = _value_of_bits(high, int_type, common)
        else:
            return False, None
    if wanted:
        members = np.concatenate(between)
        members.partition(sorted(set(wanted.values())))
        for rank, position in wanted.items():
            found[rank] = _value_of_bits(int(members[position]), int_type, common)
    return True, found


def _sample_abs_bits(pieces: list[Array], common: np.dtype[Any], total: int) -> Array:
    """Sorted bit patterns of the absolute values at a fixed pseudo-random set of positions."""
    rng = np.random.default_rng(_SAMPLE_SEED)
    positions = np.sort(rng.integers(0, total, size=min(total, _SAMPLE_SIZE)))
    parts: list[Array] = []
    start = 0
    for piece in pieces:
        stop = start + piece.size
        first, last = np.searchsorted(positions, [start, stop])
        if last > first:
            parts.append(np.abs(piece[positions[first:last] - start]).astype(common, copy=False))
        start = stop
    sample = np.concatenate(parts).view(_INT_OF_WIDTH[common.itemsize])
    sample.sort()
    return sample


def _radix_select(pieces: list[Array], common: np.dtype[Any], ranks: list[int]) -> dict[int, Any] | None:
    """Exact order statistics of the absolute values, by radix selection on their bit patterns.

    The first pass counts the top ``_DIGIT_BITS`` bits of every value; each later pass looks only
    at the buckets that hold a wanted rank, either copying a small bucket out for np.partition or
    counting its next digit. Memory stays bounded however the values are distributed (many ties
    included); it is the fallback of :func:`_bracket_select`.

    Returns:
        Rank to value (numpy scalar of ``common``), or None if any value is NaN.
    """
    width = common.itemsize * 8
    int_type = _INT_OF_WIDTH[common.itemsize]
    digits = np.empty(_BLOCK, dtype=np.intp)
    hist = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
    shift = width - _DIGIT_BITS
    for bits in _abs_bit_blocks(pieces, common):
        top = np.right_shift(bits, shift, out=digits[: bits.size])
        counts = np.bincount(top)
        hist[: counts.size] += counts

    # Buckets above the one of +inf hold only NaNs. The +inf bucket itself can hold NaNs too
    # unless the digit is the whole value (16-bit floats): look closer only when it is not empty.
    inf_top = _inf_bits(common) >> shift
    if hist[inf_top + 1 :].any():
        return None
    if shift and hist[inf_top] and any(np.isnan(p).any() for p in pieces):
        return None

    # Buckets still holding a wanted rank: (known top bits, prefix) -> (size, {rank: rank in bucket}).
    buckets: dict[tuple[int, int], tuple[int, dict[int, int]]] = {}
    _place(hist, ranks, {r: r for r in ranks}, _DIGIT_BITS, 0, buckets)
    found: dict[int, Any] = {}
    while buckets:
        collect: dict[tuple[int, int], list[Array]] = {}
        refine: dict[tuple[int, int], Array] = {}
        for key, (size, _) in list(buckets.items()):
            known, prefix = key
            if known >= width:  # every bit is known: the bucket is a single value
                for rank in buckets.pop(key)[1]:
                    found[rank] = _value_of_bits(prefix, int_type, common)
            elif size <= _COLLECT_LIMIT:
                collect[key] = []
            else:
                refine[key] = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        if not buckets:
            break
        for bits in _abs_bit_blocks(pieces, common):
            for key in buckets:
                known, prefix = key
                member = np.right_shift(bits, width - known, out=digits[: bits.size]) == prefix
                if not member.any():
                    continue
                chosen = bits[member]
                if key in collect:
                    collect[key].append(chosen)
                else:
                    low = width - known - _DIGIT_BITS
                    sub = (chosen >> low) & ((1 << _DIGIT_BITS) - 1)
                    counts = np.bincount(sub.astype(np.intp, copy=False))
                    refine[key][: counts.size] += counts
        for key, parts in collect.items():
            _, local = buckets.pop(key)
            members = np.concatenate(parts)
            kth = sorted(set(local.values()))
            members.partition(kth)
            for rank, position in local.items():
                found[rank] = _value_of_bits(int(members[position]), int_type, common)
        for key, sub_hist in refine.items():
            known, prefix = key
            _, local = buckets.pop(key)
            _place(sub_hist, list(local), local, known + _DIGIT_BITS, prefix, buckets)
    return found


def _place(
    hist: Array,
    ranks: list[int],
    local: dict[int, int],
    known: int,
    prefix: int,
    buckets: dict[tuple[int, int], tuple[int, dict[int, int]]],
) -> None:
    """Put each rank into the histogram bucket that holds it (rank within the bucket updated)."""
    cumulative = np.cumsum(hist)
    for rank in ranks:
        within = local[rank]
        digit = int(np.searchsorted(cumulative, within, side="right"))
        before = int(cumulative[digit - 1]) if digit else 0
        key = (known, (prefix << _DIGIT_BITS) | digit)
        size = int(hist[digit])
        buckets.setdefault(key, (size, {}))[1][rank] = within - before


def _value_of_bits(bits: int, int_type: type[np.signedinteger[Any]], common: np.dtype[Any]) -> Any:
    return np.array(bits, dtype=int_type).view(common)[()]


def _zero_clip_rescale(quotient: Array, cutoff: Any, gamma: float, steps: float) -> Array:
    """Set values with ``|v| < cutoff`` to +0.0, clip to ``[-gamma, gamma]``, multiply by ``steps``.

    Works in place on ``quotient`` unless the clipped and rescaled values have another dtype (as
    the stock filter's expressions decide), in which case a new array is returned.
    """
    empty = np.empty(0, dtype=quotient.dtype)
    out_dtype = (np.clip(empty, -gamma, gamma) * steps).dtype
    flat = quotient.ravel(order="K")
    length = min(flat.size, _BLOCK)
    scratch = np.empty(length, dtype=quotient.dtype)
    below = np.empty(length, dtype=bool)
    keep = np.empty(length, dtype=np.int8)
    int_type = _INT_OF_WIDTH.get(quotient.dtype.itemsize)
    if out_dtype == quotient.dtype:
        result = quotient
        target = flat
    else:
        result = np.empty_like(quotient, dtype=out_dtype)
        target = result.ravel(order="K")
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK]
        n = block.size
        np.less(np.abs(block, out=scratch[:n]), cutoff, out=below[:n])
        if int_type is not None:
            # AND with 0 (zero these) or with all ones (keep): +0.0 exactly, and much faster than
            # a masked assignment. below is 1 where the value goes, so below - 1 is 0 or -1.
            np.subtract(below[:n].view(np.int8), np.int8(1), out=keep[:n])
            as_int = block.view(int_type)
            np.bitwise_and(as_int, keep[:n], out=as_int)
        else:
            np.copyto(block, 0.0, where=below[:n])
        if target is flat:
            np.clip(block, -gamma, gamma, out=block)
            np.multiply(block, steps, out=block)
        else:
            target[start : start + n] = np.clip(block, -gamma, gamma) * steps
    return result
