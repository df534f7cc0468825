"""MetricPolicy: which metrics may leave a trust, decided by the site, enforced at the site.

A trust's YAML policy (``flip-nvflare site-policy render``) may list the metric labels allowed to
leave (exact names or glob patterns) and a number of significant digits to round values to. The
render writes them to the site's ``local/flip_metric_policy.json`` next to ``privacy.json``; every
job process at the site reads that file (:meth:`MetricPolicy.for_site`), never the job's config.

:meth:`MetricPolicy.admit` decides one metric: it returns the value that may leave (rounded when
the policy says so) or None when the metric is dropped, and counts drops per label and reason
(never values). Non-finite values never leave, with or without a policy. A label holding a control
character (a newline, say) or longer than :data:`MAX_LABEL` characters never leaves either, and is
counted under :data:`INVALID_LABEL` rather than under itself. Without the file, every finite metric
with a valid label may leave (the behaviour before site metric policies). If the file exists but
cannot be read or is malformed, nothing may leave (fail closed).

Both ways client code reports metrics call it: :func:`flip_nvflare.metrics.send_metrics_value`,
and NVFlare's analytics (``SummaryWriter``, ``flare.log``) through the same call.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.core.base import finite_float

if TYPE_CHECKING:
    from nvflare.apis.fl_context import FLContext

__all__ = [
    "INVALID_LABEL",
    "MAX_LABEL",
    "METRIC_POLICY_FILE",
    "MetricPolicy",
    "check_patterns",
    "significant",
]

#: The file, in the site's ``local/`` folder, that holds the metric policy.
METRIC_POLICY_FILE = "flip_metric_policy.json"
#: Longest label that may leave (characters).
MAX_LABEL = 128
#: What a drop of a label that may not even be shown is counted under.
INVALID_LABEL = "<invalid label>"
#: Reasons a metric is dropped.
NOT_ALLOWED = "not_allowed"
NON_FINITE = "non_finite"
BAD_LABEL = "invalid_label"
NO_POLICY = "policy_unreadable"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (``digits`` >= 1)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def check_patterns(patterns: object) -> list[str]:
    """Problems of an allow list (empty if it is fine): a list of printable strings of 1 to 128 characters."""
    if not isinstance(patterns, list):
        return [f"'allow' must be a list of metric labels or glob patterns, got {type(patterns).__name__}"]
    problems = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_LABEL or _CONTROL.search(pattern):
            problems.append(
                f"'allow' entry {pattern!r} must be text of 1 to {MAX_LABEL} printable characters "
                "(an exact label, or a glob such as 'val_*')"
            )
    return problems


@dataclass(frozen=True)
class _Rules:
    allow: tuple[str, ...] | None
    digits: int | None
    broken: str | None = None


class MetricPolicy:
    """A site's metric rules and the drops they made in this process.

    Args:
        allow: Labels or glob patterns (``fnmatch``, case-sensitive) that may leave; None allows
            every valid label; an empty list allows none.
        significant_digits: Round values to this many significant digits before they leave (1..17), or None.
        broken: Why the site's policy file could not be used (then nothing may leave).
        source: Where the policy came from (for logs).
    """

    def __init__(
        self,
        allow: Iterable[str] | None = None,
        significant_digits: int | None = None,
        *,
        broken: str | None = None,
        source: str = "arguments",
    ) -> None:
        if allow is not None and not isinstance(allow, (list, tuple)):
            raise ValueError(f"'allow' must be a list of metric labels or glob patterns, got {type(allow).__name__}")
        patterns = None if allow is None else list(allow)
        if patterns is not None:
            problems = check_patterns(patterns)
            if problems:
                raise ValueError("; ".join(problems))
        if significant_digits is not None and (
            isinstance(significant_digits, bool) or not isinstance(significant_digits, int)
        ):
            raise ValueError(f"significant_digits must be a whole number from 1 to 17, got {significant_digits!r}")
        if significant_digits is not None and not 1 <= significant_digits <= 17:
            raise ValueError(f"significant_digits must be from 1 to 17, got {significant_digits!r}")
        self._rules = _Rules(None if patterns is None else tuple(patterns), significant_digits, broken)
        self.source = source
        self._drops: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    @property
    def allow(self) -> tuple[str, ...] | None:
        """The allowed labels and patterns (None: every valid label)."""
        return self._rules.allow

    @property
    def significant_digits(self) -> int | None:
        """The significant digits values are rounded to, or None."""
        return self._rules.digits

    @property
    def broken(self) -> str | None:
        """Why the policy file could not be used, if it could not (nothing may leave then)."""
        return self._rules.broken

    def allows(self, label: str) -> bool:
        """Whether ``label`` may leave (the label alone; see :meth:`admit` for the value)."""
        if self._rules.broken is not None or not valid_label(label):
            return False
        allow = self._rules.allow
        return allow is None or any(label == p or fnmatchcase(label, p) for p in allow)

    def admit(self, label: object, value: object) -> float | None:
        """The value that may leave for this metric, or None if it is dropped (and counted).

        Args:
            label: The metric's label as the client code gave it.
            value: Its value (a number, numpy scalar or one-element tensor).

        Returns:
            The value as a float, rounded to the policy's significant digits, or None when dropped.
        """
        if not isinstance(label, str) or not valid_label(label):
            self._count(INVALID_LABEL, BAD_LABEL)
            return None
        if self._rules.broken is not None:
            self._count(label, NO_POLICY)
            return None
        if not self.allows(label):
            self._count(label, NOT_ALLOWED)
            return None
        number = _finite(value)
        if number is None:
            self._count(label, NON_FINITE)
            return None
        digits = self._rules.digits
        return significant(number, digits) if digits is not None else number

    def _count(self, label: str, reason: str) -> None:
        with self._lock:
            self._drops[(label, reason)] += 1

    def dropped(self, label: str | None = None, reason: str | None = None) -> int:
        """How many metrics were dropped (of one label and/or reason)."""
        with self._lock:
            return sum(
                n
                for (lab, why), n in self._drops.items()
                if (label is None or lab == label) and (reason is None or why == reason)
            )

    def drops(self) -> dict[str, dict[str, int]]:
        """Drops so far as ``{label: {reason: count}}`` (labels and counts only)."""
        with self._lock:
            result: dict[str, dict[str, int]] = {}
            for (label, reason), count in sorted(self._drops.items()):
                result.setdefault(label, {})[reason] = count
            return result

    # ------------------------------------------------------------------ the site's file

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MetricPolicy:
        """The policy in ``path``; no file means no list; a file that cannot be used means nothing may leave."""
        target = Path(path)
        if not target.exists():
            return cls(source=f"{os.fspath(target)} (absent: no allow list)")
        try:
            document = json.loads(target.read_text(encoding="utf-8"))
            allow = document["allow"]
            digits = document.get("significant_digits")
            return cls(allow, digits, source=os.fspath(target))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return cls([], broken=f"{type(exc).__name__}", source=os.fspath(target))

    @classmethod
    def for_site(cls, fl_ctx: FLContext) -> MetricPolicy:
        """The policy of the site running ``fl_ctx``'s job, from its ``local/`` folder, read once per process.

        A site whose workspace cannot be found gets a policy that lets nothing leave.
        """
        try:
            folder = fl_ctx.get_engine().get_workspace().get_site_config_dir()
        except Exception:
            return _cached(None)
        if not isinstance(folder, (str, Path)):
            return _cached(None)
        path = os.path.join(folder, METRIC_POLICY_FILE)
        return _cached(path)


def valid_label(label: str) -> bool:
    """Whether ``label`` is 1 to :data:`MAX_LABEL` characters, not blank, with no control character."""
    return 1 <= len(label) <= MAX_LABEL and bool(label.strip()) and not _CONTROL.search(label)


_finite = finite_float


_CACHE: dict[str | None, tuple[Any, MetricPolicy]] = {}
_CACHE_LOCK = threading.Lock()


def _cached(path: str | None) -> MetricPolicy:
    """One policy object per file (so drops are counted across calls), re-read if the file changes."""
    try:
        stamp: Any = os.stat(path) if path is not None else None
        key = (stamp.st_mtime_ns, stamp.st_size) if stamp is not None else "absent"
    except OSError:
        key = "absent"
    with _CACHE_LOCK:
        known = _CACHE.get(path)
        if known is not None and known[0] == key:
            return known[1]
        if path is None:
            policy = MetricPolicy([], broken="no site workspace", source="unknown site")
        else:
            policy = MetricPolicy.from_file(path)
        _CACHE[path] = (key, policy)
        return policy
