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
_TOP_KEYS = ("version", "minimum", "default_scope", "scopes", "allowed_result_kinds")
_FILTER_KEY = "percentile_privacy"


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


@dataclass(frozen=True)
class SitePolicy:
    """A validated site policy.

    Attributes:
        minimum: The weakest filter setting any scope may have.
        default_scope: Scope for jobs that name none.
        scopes: Every scope, in file order.
        allowed_result_kinds: DXO kinds that may leave the site; any other DXO is blocked.
    """

    minimum: PercentileSetting
    default_scope: str
    scopes: tuple[PrivacyScope, ...]
    allowed_result_kinds: tuple[str, ...] = DEFAULT_RESULT_KINDS


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
    raw_minimum = document.get("minimum")
    if not isinstance(raw_minimum, dict) or set(raw_minimum) != {_FILTER_KEY}:
        problems.append(f"'minimum' must be a mapping with the one key '{_FILTER_KEY}' (percentile and gamma)")
    else:
        minimum = _setting(raw_minimum[_FILTER_KEY], f"minimum.{_FILTER_KEY}", None, problems)

    scopes: list[PrivacyScope] = []
    raw_scopes = document.get("scopes")
    if not isinstance(raw_scopes, dict) or not raw_scopes:
        problems.append("'scopes' must be a mapping of at least one scope name to its settings")
        raw_scopes = {}
    for name, body in raw_scopes.items():
        scope = _scope(name, body, minimum, problems)
        if scope is not None:
            scopes.append(scope)

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


def _scope(name: Any, body: Any, minimum: PercentileSetting | None, problems: list[str]) -> PrivacyScope | None:
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
    unknown = [str(k) for k in body if k not in (_FILTER_KEY, "properties")]
    if unknown:
        problems.append(f"scope '{name}' has unknown key(s) {', '.join(unknown)}; allowed: {_FILTER_KEY}, properties")
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
    return PrivacyScope(name=name, percentile_privacy=setting, properties=dict(properties))


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
    site minimum and ``off: false``.

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
        entry["task_result_filters"] = _result_filters(scope.percentile_privacy, policy.minimum, kinds)
        entry["task_data_filters"] = []
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
    except SitePolicyError as exc:
        error = exc
        content = strictest_privacy_config(str(exc))
    _write_atomically(target, json.dumps(content, indent=2) + "\n")
    return RenderResult(path=target, policy=policy, error=error)


def _write_atomically(target: Path, text: str) -> None:
    try:
        write_atomically(target, text, mode=0o644)
    except OSError as exc:
        raise FlipConfigError(f"cannot write {os.fspath(target)!r}: {exc.strerror or exc}") from None
