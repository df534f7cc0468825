"""A trust's privacy policy: a short YAML file rendered into NVFlare's ``local/privacy.json``.

A trust, not the job, decides what may leave it. The policy names the privacy scopes a job may
pick (``"scope"`` in the job's ``meta.json``), the filter settings of each, and a minimum no scope
may go below. NVFlare runs a site's scope filters on every task result before the job's own
filters, and a job cannot change them; the rendered filters also carry the minimum and pin
``off: false``, so even a hand-edited ``privacy.json`` cannot weaken them without the job failing.

Fail-closed: if the policy file is missing or invalid, the strictest policy is written instead
(no DXO of any kind leaves the site, so training fails visibly) and the problems are reported.

The YAML schema is documented in ``docs/site_policy.md``. Command line (through the top-level
``flip-nvflare`` CLI)::

    flip-nvflare site-policy render POLICY.yaml --site-workspace DIR
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flip_nvflare.errors import FlipConfigError, SitePolicyError
from flip_nvflare.workspace import write_atomically

__all__ = [
    "DPSetting",
    "MetricRules",
    "PercentileSetting",
    "PrivacyScope",
    "RenderResult",
    "SitePolicy",
    "SitePolicyError",
    "load_policy",
    "parse_policy",
    "privacy_config",
    "render_site_policy",
    "strictest_privacy_config",
]

SCHEMA_VERSION = 1
PERCENTILE_FILTER_PATH = "flip_nvflare.filters.percentile_privacy.PercentilePrivacy"
DP_FILTER_PATH = "flip_nvflare.filters.gaussian_privacy.GaussianPrivacy"
#: The site's metric policy file, next to privacy.json (read by every job process at the site).
METRIC_POLICY_FILE = "flip_metric_policy.json"
BLOCKER_PATH = "nvflare.app_common.filters.dxo_blocker.DXOBlocker"
STRICTEST_SCOPE = "flip-strictest"
# A DXO kind no job uses: allowing only it blocks every DXO (DXOBlocker in "allow" mode).
_NO_KIND = "FLIP_NOTHING_MAY_LEAVE"
# DXO kinds a policy may let leave the site (NVFlare's DataKind values; COLLECTION is not one:
# filters look inside collections at the DXOs they hold).
KNOWN_RESULT_KINDS = (
    "WEIGHT_DIFF",
    "WEIGHTS",
    "METRICS",
    "FL_MODEL",
    "ANALYTIC",
    "STATISTICS",
    "PSI",
    "APP_DEFINED",
)
DEFAULT_RESULT_KINDS = ("WEIGHT_DIFF", "WEIGHTS", "METRICS")
# The percentile filter always covers both model kinds: a job could otherwise send full weights
# to dodge a filter on weight differences.
FILTERED_KINDS = ["WEIGHT_DIFF", "WEIGHTS"]
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOP_KEYS = ("version", "minimum", "default_scope", "scopes", "allowed_result_kinds", "metrics")
_FILTER_KEY = "percentile_privacy"
_DP_KEY = "differential_privacy"
_DP_KEYS = ("clip_norm", "delta", "noise_multiplier", "epsilon", "budget", "per_layer", "accountant")
_ACCOUNTANTS = ("rdp", "pld")
_LABEL_CHARS = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class DPSetting:
    """Settings of the differential-privacy filter (see :class:`~flip_nvflare.filters.GaussianPrivacy`).

    Attributes:
        clip_norm: L2 bound of a round's update (a scope may only lower it).
        delta: The guarantee's delta (a scope may only lower it).
        noise_multiplier: Least noise multiplier (a scope may only raise it), or None.
        epsilon: Most epsilon a job's planned rounds may spend (noise calibrated to it), or None.
        budget: Cap on the epsilon a job actually spends at this site, or None.
        per_layer: Clip each layer to ``clip_norm / sqrt(layers)``.
        accountant: ``"rdp"`` or ``"pld"``.
    """

    clip_norm: float
    delta: float
    noise_multiplier: float | None = None
    epsilon: float | None = None
    budget: float | None = None
    per_layer: bool = False
    accountant: str = "rdp"


@dataclass(frozen=True)
class MetricRules:
    """Which metrics may leave the site.

    Attributes:
        allow: Exact labels or glob patterns allowed to leave, or None for every label.
        significant_digits: Round values to this many significant digits, or None.
    """

    allow: tuple[str, ...] | None = None
    significant_digits: int | None = None


@dataclass(frozen=True)
class PercentileSetting:
    """Settings of the percentile filter (see :class:`~flip_nvflare.filters.PercentilePrivacy`).

    Attributes:
        percentile: Absolute changes below this percentile (0..100) are not shared.
        gamma: Shared changes are clipped to ``[-gamma, gamma]``.
    """

    percentile: float
    gamma: float


@dataclass(frozen=True)
class PrivacyScope:
    """One scope a job may choose.

    Attributes:
        name: Scope name, as a job's ``meta.json`` ``"scope"`` names it.
        percentile_privacy: Filter settings, never weaker than the policy's minimum.
        properties: Free-form scope properties NVFlare hands to the job (JSON values).
    """

    name: str
    percentile_privacy: PercentileSetting
    properties: dict[str, Any] = field(default_factory=dict)
    differential_privacy: DPSetting | None = None


@dataclass(frozen=True)
class SitePolicy:
    """A validated site policy.

    Attributes:
        minimum: The weakest filter setting any scope may have.
        default_scope: Scope for jobs that name none.
        scopes: Every scope, in file order.
        allowed_result_kinds: DXO kinds that may leave the site; any other DXO is blocked.
        dp_minimum: The weakest differential-privacy settings any scope may have; None if the
            site does not mandate differential privacy for every scope.
        metrics: Which metrics may leave, or None for every metric (non-finite values never leave).
    """

    minimum: PercentileSetting
    default_scope: str
    scopes: tuple[PrivacyScope, ...]
    allowed_result_kinds: tuple[str, ...] = DEFAULT_RESULT_KINDS
    dp_minimum: DPSetting | None = None
    metrics: MetricRules | None = None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: each key may appear once", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_policy(text: str, source: str = "site policy") -> SitePolicy:
    """Validate the YAML text of a site policy.

    Args:
        text: The policy, in the schema of ``docs/site_policy.md``.
        source: Name of the policy (e.g. its path) for error messages.

    Returns:
        The validated policy.

    Raises:
        SitePolicyError: The text is not valid YAML or breaks the schema; every problem is listed.
    """
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        raise SitePolicyError(source, [f"not valid YAML: {exc}"]) from None
    problems: list[str] = []
    policy = _validate(document, problems)
    if problems or policy is None:
        raise SitePolicyError(source, problems or ["invalid policy"])
    return policy


def load_policy(path: str | os.PathLike[str]) -> SitePolicy:
    """Read and validate a site policy file.

    Args:
        path: Path of the YAML policy.

    Returns:
        The validated policy.

    Raises:
        SitePolicyError: The file is missing, unreadable or invalid.
    """
    return _load(path)[0]


def _load(path: str | os.PathLike[str]) -> tuple[SitePolicy, str]:
    """The validated policy and the SHA-256 of the bytes it was read from."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SitePolicyError(source, ["file not found; write a policy (see docs/site_policy.md)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SitePolicyError(source, [f"cannot be read: {exc}"]) from None
    return parse_policy(text, source), hashlib.sha256(raw).hexdigest()


def _validate(document: Any, problems: list[str]) -> SitePolicy | None:
    if not isinstance(document, dict):
        problems.append(f"the policy must be a YAML mapping with keys {', '.join(_TOP_KEYS)}")
        return None
    unknown = [str(k) for k in document if k not in _TOP_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_TOP_KEYS)}")
    version = document.get("version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        problems.append(f"'version' must be {SCHEMA_VERSION}, got {version!r}")

    minimum = None
    dp_minimum = None
    dp_minimum_ok = True
    raw_minimum = document.get("minimum")
    if not isinstance(raw_minimum, dict) or _FILTER_KEY not in raw_minimum or set(raw_minimum) - {_FILTER_KEY, _DP_KEY}:
        problems.append(
            f"'minimum' must be a mapping with the key '{_FILTER_KEY}' (percentile and gamma) and optionally "
            f"'{_DP_KEY}'"
        )
    else:
        minimum = _setting(raw_minimum[_FILTER_KEY], f"minimum.{_FILTER_KEY}", None, problems)
        if _DP_KEY in raw_minimum:
            dp_minimum = _dp_setting(raw_minimum[_DP_KEY], f"minimum.{_DP_KEY}", None, problems)
            dp_minimum_ok = dp_minimum is not None

    scopes: list[PrivacyScope] = []
    raw_scopes = document.get("scopes")
    if not isinstance(raw_scopes, dict) or not raw_scopes:
        problems.append("'scopes' must be a mapping of at least one scope name to its settings")
        raw_scopes = {}
    for name, body in raw_scopes.items():
        scope = _scope(name, body, minimum, dp_minimum, dp_minimum_ok, problems)
        if scope is not None:
            scopes.append(scope)
    metrics = _metric_rules(document.get("metrics"), problems) if "metrics" in document else None

    default_scope = document.get("default_scope")
    if not isinstance(default_scope, str) or default_scope not in raw_scopes:
        problems.append(
            f"'default_scope' must name one of the scopes ({', '.join(map(str, raw_scopes)) or 'none defined'}), "
            f"got {default_scope!r}"
        )

    kinds = document.get("allowed_result_kinds", list(DEFAULT_RESULT_KINDS))
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        problems.append("'allowed_result_kinds' must be a non-empty list of DXO kinds")
        kinds = []
    bad_kinds = [k for k in kinds if k not in KNOWN_RESULT_KINDS]
    if bad_kinds:
        problems.append(
            f"'allowed_result_kinds' has unknown kind(s) {', '.join(bad_kinds)}; "
            f"choose from {', '.join(KNOWN_RESULT_KINDS)}"
        )
    if problems or minimum is None:
        return None
    assert isinstance(default_scope, str)
    return SitePolicy(
        minimum=minimum,
        default_scope=default_scope,
        scopes=tuple(scopes),
        allowed_result_kinds=tuple(dict.fromkeys(kinds)),
        dp_minimum=dp_minimum,
        metrics=metrics,
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _setting(raw: Any, where: str, minimum: PercentileSetting | None, problems: list[str]) -> PercentileSetting | None:
    """Validate percentile-filter settings; a scope may leave out what it takes from the minimum."""
    if raw is None and minimum is not None:
        return minimum
    if not isinstance(raw, dict):
        problems.append(f"'{where}' must be a mapping with 'percentile' and 'gamma'")
        return None
    before = len(problems)
    # YAML 1.1 reads an unquoted `off` key as the boolean false
    switch = [k for k in raw if k == "off" or isinstance(k, bool)]
    if switch:
        problems.append(f"'{where}.off': a site filter cannot be switched off; remove 'off'")
    unknown = [str(k) for k in raw if k not in ("percentile", "gamma") and k not in switch]
    if unknown:
        problems.append(f"'{where}' has unknown key(s) {', '.join(unknown)}; allowed: percentile, gamma")
    percentile: Any = raw.get("percentile", minimum.percentile if minimum else None)
    gamma: Any = raw.get("gamma", minimum.gamma if minimum else None)
    if not (_number(percentile) and 0 <= percentile <= 100):
        problems.append(f"'{where}.percentile' must be a number from 0 to 100, got {percentile!r}")
    if not (_number(gamma) and gamma > 0):
        problems.append(f"'{where}.gamma' must be a positive number, got {gamma!r}")
    if len(problems) > before:
        return None
    if minimum is not None:
        if percentile < minimum.percentile:
            problems.append(
                f"'{where}.percentile' {percentile} is below the site minimum {minimum.percentile}; "
                "raise it or lower the minimum"
            )
        if gamma > minimum.gamma:
            problems.append(
                f"'{where}.gamma' {gamma} is above the site minimum's {minimum.gamma} (a larger gamma "
                "shares more); lower it or raise the minimum's gamma"
            )
    return PercentileSetting(percentile=percentile, gamma=gamma) if len(problems) == before else None


def _dp_number(raw: dict[Any, Any], key: str, where: str, problems: list[str]) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if "e" in value.lower() else ""
        problems.append(f"'{where}.{key}' must be a number, got text {value!r}{hint}")
        return None
    if not _number(value) or not value > 0:
        problems.append(f"'{where}.{key}' must be a positive number, got {value!r}")
        return None
    return float(value)


def _dp_setting(raw: Any, where: str, minimum: DPSetting | None, problems: list[str]) -> DPSetting | None:
    """Validate differential-privacy settings; a scope takes what it leaves out from the minimum."""
    if raw is None and minimum is not None:
        return minimum
    if not isinstance(raw, dict):
        problems.append(f"'{where}' must be a mapping with {', '.join(_DP_KEYS)}")
        return None
    before = len(problems)
    switch = [k for k in raw if k == "off" or isinstance(k, bool)]
    if switch:
        problems.append(f"'{where}.off': differential privacy required by the site cannot be switched off")
    unknown = [str(k) for k in raw if k not in _DP_KEYS and k not in switch]
    if unknown:
        problems.append(f"'{where}' has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_DP_KEYS)}")
    values = {
        key: _dp_number(raw, key, where, problems)
        for key in ("clip_norm", "delta", "noise_multiplier", "epsilon", "budget")
    }
    base = minimum
    clip = values["clip_norm"] if values["clip_norm"] is not None else (base.clip_norm if base else None)
    delta = values["delta"] if values["delta"] is not None else (base.delta if base else None)
    noise = (
        values["noise_multiplier"]
        if values["noise_multiplier"] is not None
        else (base.noise_multiplier if base else None)
    )
    epsilon = values["epsilon"] if values["epsilon"] is not None else (base.epsilon if base else None)
    budget = values["budget"] if values["budget"] is not None else (base.budget if base else None)
    per_layer = raw.get("per_layer", base.per_layer if base else False)
    accountant = raw.get("accountant", base.accountant if base else "rdp")
    if clip is None and "clip_norm" not in raw:
        problems.append(f"'{where}.clip_norm' is required (the L2 bound of a round's update, e.g. 1.0)")
    if delta is None and "delta" not in raw:
        problems.append(f"'{where}.delta' is required (e.g. 1.0e-5)")
    if delta is not None and not delta < 1:
        problems.append(f"'{where}.delta' must be below 1, got {delta!r}")
    if noise is None and epsilon is None and "noise_multiplier" not in raw and "epsilon" not in raw:
        problems.append(f"'{where}' needs 'noise_multiplier' or 'epsilon' (or both): without either there is no noise")
    if not isinstance(per_layer, bool):
        problems.append(f"'{where}.per_layer' must be true or false, got {per_layer!r}")
    if accountant not in _ACCOUNTANTS:
        problems.append(f"'{where}.accountant' must be one of {', '.join(_ACCOUNTANTS)}, got {accountant!r}")
    if len(problems) > before or clip is None or delta is None:
        return None
    if minimum is not None:
        weaker = []
        if clip > minimum.clip_norm:
            weaker.append(f"clip_norm {clip} is above the site minimum's {minimum.clip_norm}")
        if delta > minimum.delta:
            weaker.append(f"delta {delta} is above the site minimum's {minimum.delta}")
        if minimum.noise_multiplier is not None and (noise is None or noise < minimum.noise_multiplier):
            weaker.append(f"noise_multiplier {noise} is below the site minimum {minimum.noise_multiplier}")
        if minimum.epsilon is not None and (epsilon is None or epsilon > minimum.epsilon):
            weaker.append(f"epsilon {epsilon} is above the site minimum's {minimum.epsilon}")
        if minimum.budget is not None and (budget is None or budget > minimum.budget):
            weaker.append(f"budget {budget} is above the site minimum's {minimum.budget}")
        for text in weaker:
            problems.append(f"'{where}': {text}; make it stricter or relax the minimum")
        if weaker:
            return None
    return DPSetting(
        clip_norm=clip,
        delta=delta,
        noise_multiplier=noise,
        epsilon=epsilon,
        budget=budget,
        per_layer=per_layer,
        accountant=accountant,
    )


def _metric_rules(raw: Any, problems: list[str]) -> MetricRules | None:
    if not isinstance(raw, dict):
        problems.append("'metrics' must be a mapping with 'allow' and/or 'significant_digits'")
        return None
    before = len(problems)
    unknown = [str(k) for k in raw if k not in ("allow", "significant_digits")]
    if unknown:
        problems.append(f"'metrics' has unknown key(s) {', '.join(unknown)}; allowed: allow, significant_digits")
    allow = raw.get("allow")
    if allow is not None:
        if not isinstance(allow, list):
            problems.append("'metrics.allow' must be a list of metric labels or glob patterns (e.g. 'val_*')")
        else:
            for pattern in allow:
                if not isinstance(pattern, str) or not 1 <= len(pattern) <= _LABEL_CHARS or _CONTROL.search(pattern):
                    problems.append(
                        f"'metrics.allow' entry {pattern!r} must be text of 1 to {_LABEL_CHARS} printable characters"
                    )
    digits = raw.get("significant_digits")
    if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 17):
        problems.append(f"'metrics.significant_digits' must be a whole number from 1 to 17, got {digits!r}")
    if len(problems) > before:
        return None
    return MetricRules(allow=None if allow is None else tuple(allow), significant_digits=digits)


def _scope(
    name: Any,
    body: Any,
    minimum: PercentileSetting | None,
    dp_minimum: DPSetting | None,
    dp_minimum_ok: bool,
    problems: list[str],
) -> PrivacyScope | None:
    if not isinstance(name, str) or not _SCOPE_NAME.match(name):
        problems.append(
            f"scope name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting with "
            "a letter or digit"
        )
        return None
    if name == STRICTEST_SCOPE:
        problems.append(f"scope name '{STRICTEST_SCOPE}' is reserved for the fail-closed policy")
        return None
    body = {} if body is None else body
    if not isinstance(body, dict):
        problems.append(f"scope '{name}' must be a mapping (or empty), got {type(body).__name__}")
        return None
    unknown = [str(k) for k in body if k not in (_FILTER_KEY, "properties", _DP_KEY)]
    if unknown:
        problems.append(
            f"scope '{name}' has unknown key(s) {', '.join(unknown)}; allowed: {_FILTER_KEY}, {_DP_KEY}, properties"
        )
    dp: DPSetting | None = None
    if _DP_KEY in body or dp_minimum is not None:
        dp = _dp_setting(body.get(_DP_KEY), f"scopes.{name}.{_DP_KEY}", dp_minimum, problems)
        if dp is None:
            return None
    if not dp_minimum_ok:
        return None
    properties = body.get("properties") or {}
    if not isinstance(properties, dict) or not all(isinstance(k, str) for k in properties):
        problems.append(f"scope '{name}': 'properties' must be a mapping with string keys")
        properties = {}
    try:
        json.dumps(properties, allow_nan=False)
    except (TypeError, ValueError):
        problems.append(f"scope '{name}': 'properties' must hold plain JSON values (text, numbers, lists, maps)")
    if minimum is None:
        return None
    setting = _setting(body.get(_FILTER_KEY), f"scopes.{name}.{_FILTER_KEY}", minimum, problems)
    if setting is None:
        return None
    return PrivacyScope(name=name, percentile_privacy=setting, properties=dict(properties), differential_privacy=dp)


def _dp_args(setting: DPSetting, minimum: DPSetting) -> dict[str, Any]:
    args: dict[str, Any] = {"clip_norm": setting.clip_norm, "delta": setting.delta}
    if setting.noise_multiplier is not None:
        args["noise_multiplier"] = setting.noise_multiplier
    if setting.epsilon is not None:
        args["target_epsilon"] = setting.epsilon
    if setting.budget is not None:
        args["max_epsilon"] = setting.budget
    args["per_layer"] = setting.per_layer
    args["accountant"] = setting.accountant
    floor: dict[str, Any] = {"clip_norm": minimum.clip_norm, "delta": minimum.delta}
    for key, value in (
        ("noise_multiplier", minimum.noise_multiplier),
        ("target_epsilon", minimum.epsilon),
        ("max_epsilon", minimum.budget),
    ):
        if value is not None:
            floor[key] = value
    args["minimum"] = floor
    return args


def _dp_filters(
    setting: DPSetting | None, minimum: DPSetting | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The DP filter on results (out) and on task data (in: it records the global model and checks the budget)."""
    if setting is None:
        return [], []
    args = _dp_args(setting, minimum or setting)
    result = {"path": DP_FILTER_PATH, "args": args, "direction": "out"}
    data = {"path": DP_FILTER_PATH, "args": json.loads(json.dumps(args)), "direction": "in"}
    return [result], [data]


def _result_filters(setting: PercentileSetting, minimum: PercentileSetting, kinds: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "path": BLOCKER_PATH,
            "args": {"data_kinds": kinds, "allow_data_kinds": True},
            "direction": "out",
        },
        {
            "path": PERCENTILE_FILTER_PATH,
            "args": {
                "percentile": setting.percentile,
                "gamma": setting.gamma,
                "data_kinds": list(FILTERED_KINDS),
                "off": False,
                "min_percentile": minimum.percentile,
                "max_gamma": minimum.gamma,
            },
            "direction": "out",
        },
    ]


def privacy_config(policy: SitePolicy, source_digest: str | None = None) -> dict[str, Any]:
    """The ``local/privacy.json`` content for a validated policy.

    Every scope gets, on task results leaving the site: a DXO blocker that lets only
    ``allowed_result_kinds`` through, then the percentile filter with the scope's settings, the
    site minimum and ``off: false``, then (when the scope has differential privacy) the
    GaussianPrivacy filter with the scope's settings and the site minimum; that filter is also put
    on the task data, where it records the global model and checks the budget before training.

    Args:
        policy: The validated policy.
        source_digest: SHA-256 of the policy file, recorded in the output.

    Returns:
        A JSON-serialisable dict in NVFlare's privacy.json format.
    """
    kinds = list(policy.allowed_result_kinds)
    scopes = []
    for scope in policy.scopes:
        entry: dict[str, Any] = {"name": scope.name}
        if scope.properties:
            entry["properties"] = scope.properties
        dp_result, dp_data = _dp_filters(scope.differential_privacy, policy.dp_minimum)
        entry["task_result_filters"] = _result_filters(scope.percentile_privacy, policy.minimum, kinds) + dp_result
        entry["task_data_filters"] = dp_data
        scopes.append(entry)
    note: dict[str, Any] = {"rendered_by": "flip-nvflare site-policy render", "status": "policy applied"}
    if source_digest:
        note["policy_sha256"] = source_digest
    return {"_flip_site_policy": note, "scopes": scopes, "default_scope": policy.default_scope}


def strictest_privacy_config(reason: str) -> dict[str, Any]:
    """The fail-closed ``local/privacy.json``: one scope that lets no DXO leave the site.

    Results that are not DXOs (e.g. a bare reply carrying only headers) still pass, so a job can
    report its failure; a job that names any other scope is refused by NVFlare at this site.

    Args:
        reason: Why the strictest policy is in force (recorded in the output).

    Returns:
        A JSON-serialisable dict in NVFlare's privacy.json format.
    """
    return {
        "_flip_site_policy": {
            "rendered_by": "flip-nvflare site-policy render",
            "status": "STRICTEST: the site policy could not be used, no DXO may leave this site",
            "reason": reason,
        },
        "scopes": [
            {
                "name": STRICTEST_SCOPE,
                "task_result_filters": [
                    {
                        "path": BLOCKER_PATH,
                        "args": {"data_kinds": [_NO_KIND], "allow_data_kinds": True},
                        "direction": "out",
                    }
                ],
                "task_data_filters": [],
            }
        ],
        "default_scope": STRICTEST_SCOPE,
    }


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render_site_policy` wrote.

    Attributes:
        path: The ``privacy.json`` written.
        policy: The policy applied, or None if the strictest policy was written instead.
        error: Why the policy could not be used, or None.
    """

    path: Path
    policy: SitePolicy | None
    error: SitePolicyError | None


def render_site_policy(policy_path: str | os.PathLike[str], site_workspace: str | os.PathLike[str]) -> RenderResult:
    """Render a policy file into ``<site_workspace>/local/privacy.json``, failing closed.

    Args:
        policy_path: The YAML policy.
        site_workspace: The site's NVFlare workspace (the folder holding ``startup/`` and ``local/``).

    Returns:
        What was written; ``error`` is set when the strictest policy was written instead.

    Raises:
        FlipConfigError: The workspace does not exist, or the file could not be written.
    """
    workspace = Path(site_workspace)
    if not workspace.is_dir():
        raise FlipConfigError(
            f"site workspace {os.fspath(workspace)!r} is not a folder; give the site's NVFlare workspace "
            "(the folder holding startup/ and local/)"
        )
    target = workspace / "local" / "privacy.json"
    error: SitePolicyError | None = None
    policy: SitePolicy | None = None
    try:
        policy, digest = _load(policy_path)
        content = privacy_config(policy, digest)
        metrics = metric_policy_config(policy, digest)
    except SitePolicyError as exc:
        error = exc
        content = strictest_privacy_config(str(exc))
        metrics = strictest_metric_policy_config(str(exc))
    # the metric policy first: a site with a new privacy.json never has an older metric policy
    _write_atomically(workspace / "local" / METRIC_POLICY_FILE, json.dumps(metrics, indent=2) + "\n")
    _write_atomically(target, json.dumps(content, indent=2) + "\n")
    return RenderResult(path=target, policy=policy, error=error)


def metric_policy_config(policy: SitePolicy, source_digest: str | None = None) -> dict[str, Any]:
    """The ``local/flip_metric_policy.json`` content for a validated policy (``allow`` null: every label).

    Args:
        policy: The validated policy.
        source_digest: SHA-256 of the policy file, recorded in the output.
    """
    rules = policy.metrics or MetricRules()
    note: dict[str, Any] = {"rendered_by": "flip-nvflare site-policy render", "status": "policy applied"}
    if source_digest:
        note["policy_sha256"] = source_digest
    return {
        "_flip_site_policy": note,
        "allow": None if rules.allow is None else list(rules.allow),
        "significant_digits": rules.significant_digits,
    }


def strictest_metric_policy_config(reason: str) -> dict[str, Any]:
    """The fail-closed metric policy: no metric may leave the site."""
    return {
        "_flip_site_policy": {
            "rendered_by": "flip-nvflare site-policy render",
            "status": "STRICTEST: the site policy could not be used, no metric may leave this site",
            "reason": reason,
        },
        "allow": [],
        "significant_digits": None,
    }


def _write_atomically(target: Path, text: str) -> None:
    try:
        write_atomically(target, text, mode=0o644)
    except OSError as exc:
        raise FlipConfigError(f"cannot write {os.fspath(target)!r}: {exc.strerror or exc}") from None
