"""provenance.json: where a results zip came from, and the SHA-256 of every other file in it.

The :class:`~flip_nvflare.components.results.ResultsUploader` writes ``provenance.json`` into the
results folder last, just before the upload, so the zip carries:

- ``model_id``, ``job_id``, ``job_type``, ``flip_mode``, ``outcome``, ``rounds_completed``, and the
  participating ``trusts`` (names only);
- ``aggregation``: the server's workflows and aggregation components (class paths and non-secret
  args, ``"{key}"`` references resolved from the config's top-level keys), ``global_rounds`` and
  ``min_clients``;
- ``privacy``: the task data / result filters configured in the server's and the clients'
  configs (class paths and non-secret args) and, when a privacy widget added one, the run
  summary's ``privacy`` section (the epsilon spent);
- ``resource_spec``: the GPUs the job asked for (its meta file), when any;
- ``versions``: flip-nvflare, NVFlare, Python and, when installed, torch (read from the installed
  packages' metadata: nothing is imported);
- ``app_code``: a hash of the app that ran on the server (``app_server/config`` and
  ``app_server/custom``), computed as :data:`APP_CODE_METHOD` says, so anyone holding the job
  folder can recompute it (:func:`app_code_hash`, or ``verify-results --app JOB/app``);
- ``files``: the SHA-256 and size of every other file in the zip, the run summary included;
- ``digest``: the SHA-256 of this object without ``digest`` (:data:`DIGEST_METHOD`); the server
  logs it when the results are uploaded.

``flip-nvflare verify-results RESULTS.zip`` (:func:`verify_results_zip`) streams every member
through SHA-256 without extracting anything, and reports members that differ, are missing, or
were added, unsafe member names (``../x``), and a provenance that was edited. The zip is not
signed: whoever can rewrite the zip can rewrite ``provenance.json`` with new hashes and digest.
The digest in the server's log (``--expect-digest``) is what ties a zip to the run.

Secrets never enter provenance: args whose names mean a secret (``*_key``, ``token``, ``password``,
``secret``, ...) are replaced by ``"<redacted>"``. Nothing here imports NVFlare.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

from flip_nvflare.errors import FlipError
from flip_nvflare.workspace import write_atomically

PROVENANCE_FILE = "provenance.json"
#: The ``format`` of the provenance this module writes.
FORMAT = "flip-nvflare.provenance/1"
#: How ``app_code.sha256`` is computed (also written into every provenance).
APP_CODE_METHOD = (
    "sha256 over one line '<path>\\0<sha256 hex of the file>\\n' (UTF-8) per regular file under the app's "
    "config/ and custom/ folders, <path> relative to the app folder with '/' separators, lines sorted by "
    "path; symlinks, __pycache__ folders and *.pyc files are left out"
)
#: How ``digest.sha256`` is computed (also written into every provenance).
DIGEST_METHOD = "sha256 of the provenance object without 'digest', as JSON with sorted keys, separators (',', ':')"
#: The app folders the code hash covers.
APP_CODE_FOLDERS = ("config", "custom")
#: Left out of the code hash: what Python writes when the app's code is imported.
_GENERATED = re.compile(r"(^|/)__pycache__(/|$)|\.py[co]$")
#: Arg names that mean a secret (matched on the lower-cased name's ``_``-separated words).
_SECRET_WORDS = frozenset(
    {"secret", "secrets", "token", "password", "passwd", "pwd", "credential", "credentials", "auth", "apikey"}
)
REDACTED = "<redacted>"
#: Largest provenance.json read back (bytes).
MAX_PROVENANCE_BYTES = 16 * 1024 * 1024
#: Uncompressed bytes ``verify-results`` hashes at most, by default (bounds the time a crafted zip can take).
DEFAULT_MAX_BYTES = 256 * 1024**3
#: Members a zip may have before it is refused.
MAX_MEMBERS = 100_000
_CHUNK = 1024 * 1024
_DISTRIBUTIONS = (("flip-nvflare", "flip_nvflare"), ("nvflare", "nvflare"), ("torch", "torch"))


class ResultsZipError(FlipError):
    """The file cannot be checked at all: it is not a zip, or it cannot be read."""


# ---------------------------------------------------------------------- hashing files


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The SHA-256 (hex) and size of a regular file, read in chunks; symlinks are refused.

    Raises:
        OSError: It cannot be read, or it is a symlink (``ELOOP``) or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return _stream_sha256(source)


def _stream_sha256(source: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while True:
        want = _CHUNK if limit is None else min(_CHUNK, limit - size + 1)
        if want <= 0:
            break
        chunk = source.read(want)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
        if limit is not None and size > limit:
            break
    return digest.hexdigest(), size


def regular_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(relative posix path, path)`` of every regular file under ``folder``, sorted; no link is followed."""
    found: list[tuple[str, Path]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    path = Path(entry.path)
                    found.append((path.relative_to(folder).as_posix(), path))
    yield from sorted(found)


def results_file_hashes(folder: Path, exclude: Sequence[str] = (PROVENANCE_FILE,)) -> dict[str, dict[str, Any]]:
    """``{name in the zip: {"sha256", "size"}}`` of every regular file the zip of ``folder`` will hold.

    Names are what :func:`flip_nvflare.core.results.zip_folder` writes: paths relative to
    ``folder`` with ``/``; symlinks are skipped there and here.
    """
    hashes: dict[str, dict[str, Any]] = {}
    for name, path in regular_files(folder):
        if name in exclude:
            continue
        digest, size = file_sha256(path)
        hashes[name] = {"sha256": digest, "size": size}
    return hashes


def app_code_hash(app_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The hash of an app's code and configs (:data:`APP_CODE_METHOD`); None if it has neither folder.

    Works on the server's ``app_server`` folder and on a job folder's ``app`` alike.

    Returns:
        ``{"sha256": hex, "files": count, "method": APP_CODE_METHOD}``.
    """
    root = Path(app_dir)
    lines: list[str] = []
    for sub in APP_CODE_FOLDERS:
        folder = root / sub
        if folder.is_symlink() or not folder.is_dir():
            continue
        for name, path in regular_files(folder):
            relative = f"{sub}/{name}"
            if _GENERATED.search(relative):
                continue
            lines.append(f"{relative}\0{file_sha256(path)[0]}\n")
    if not lines:
        return None
    digest = hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()
    return {"sha256": digest, "files": len(lines), "method": APP_CODE_METHOD}


# ---------------------------------------------------------------------- what the job configured


def is_secret_name(name: str) -> bool:
    """Whether an arg named ``name`` may hold a secret (``api_key``, ``token``, ``db_password``...)."""
    lowered = name.lower().replace("-", "_")
    words = set(lowered.split("_"))
    return bool(words & _SECRET_WORDS) or lowered == "key" or lowered.endswith("_key") or lowered.endswith("key_id")


def _resolve(value: Any, top: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and len(value) > 2 and value.startswith("{") and value.endswith("}"):
        name = value[1:-1]
        if name in top and not isinstance(top[name], (dict, list)):
            return top[name]
    return value


def public_args(args: Any, top: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """``args`` without secrets: secret-named keys redacted, ``"{key}"`` references resolved from ``top``."""
    top = top or {}
    if depth > 8:
        return REDACTED
    if isinstance(args, dict):
        return {str(k): REDACTED if is_secret_name(str(k)) else public_args(v, top, depth + 1) for k, v in args.items()}
    if isinstance(args, list):
        return [public_args(v, top, depth + 1) for v in args]
    value = _resolve(args, top)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _component(item: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in ("id", "path", "name"):
        if isinstance(item.get(key), str):
            entry[key] = item[key]
    entry["args"] = public_args(item.get("args") or {}, top)
    return entry


def _items(config: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = config.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _filter_chains(config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    chains: dict[str, list[dict[str, Any]]] = {}
    for kind in ("task_data_filters", "task_result_filters"):
        chains[kind] = [
            {
                "tasks": [str(t) for t in chain.get("tasks", [])] if isinstance(chain.get("tasks"), list) else [],
                "filters": [_component(f, config) for f in _items(chain, "filters")],
            }
            for chain in _items(config, kind)
        ]
    return chains


def _is_aggregation(item: Mapping[str, Any]) -> bool:
    text = f"{item.get('id', '')} {item.get('path', '')} {item.get('name', '')}".lower()
    return any(word in text for word in ("aggregat", "shareable_generator", "shareablegenerator", "fedopt"))


def job_settings(server: Mapping[str, Any] | None, client: Mapping[str, Any] | None) -> dict[str, Any]:
    """The aggregation and privacy settings of a job's configs (class paths and non-secret args).

    Args:
        server: ``config_fed_server.json``, if available.
        client: ``config_fed_client.json``, if available (the server holds it when the job's one
            app goes to every site).

    Returns:
        ``{"aggregation": {...}, "privacy": {"server_filters": ..., "client_filters": ...}}``; a
        config that was not available is ``None`` there.
    """
    aggregation: dict[str, Any] | None = None
    if server is not None:
        aggregation = {
            "global_rounds": public_args(server.get("global_rounds"), server),
            "min_clients": public_args(server.get("min_clients"), server),
            "workflows": [_component(w, server) for w in _items(server, "workflows")],
            "components": [_component(c, server) for c in _items(server, "components") if _is_aggregation(c)],
        }
    return {
        "aggregation": aggregation,
        "privacy": {
            "server_filters": _filter_chains(server) if server is not None else None,
            "client_filters": _filter_chains(client) if client is not None else None,
        },
    }


def job_type_of(server: Mapping[str, Any] | None, app_config: Mapping[str, Any] | None = None) -> str | None:
    """The FLIP job type: the app's ``config.json`` ``job_type`` (as FLIP's hub reads it), else the workflows'."""
    declared = (app_config or {}).get("job_type")
    if isinstance(declared, str) and declared:
        return declared
    if server is None:
        return None
    paths = [str(item.get("path", "")) for item in (*_items(server, "workflows"), *_items(server, "components"))]
    if any(p.endswith(("InitEvaluation", "EvaluateModels", "GlobalModelEval")) for p in paths):
        return "evaluation"
    if any("fedopt" in p.lower() for p in paths):
        return "fed_opt"
    return "standard"


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file that is not a symlink; None if absent, a link, unreadable or not an object."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def versions() -> dict[str, str | None]:
    """Installed versions of flip-nvflare, NVFlare, torch (None: not installed) and Python; nothing imported."""
    found: dict[str, str | None] = {}
    for distribution, key in _DISTRIBUTIONS:
        try:
            found[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[key] = None
    if found["flip_nvflare"] is None:
        from flip_nvflare import __version__

        found["flip_nvflare"] = __version__
    found["python"] = platform.python_version()
    return found


# ---------------------------------------------------------------------- building and writing


def digest_of(provenance: Mapping[str, Any]) -> str:
    """The SHA-256 of ``provenance`` without its ``digest`` (:data:`DIGEST_METHOD`)."""
    body = {k: v for k, v in provenance.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def build_provenance(
    summary: Mapping[str, Any],
    *,
    results_folder: Path,
    job_id: str | None,
    job_type: str | None,
    rounds_completed: int,
    settings: Mapping[str, Any],
    app_code: Mapping[str, Any] | None,
    resource_spec: Any = None,
    installed: Mapping[str, str | None] | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The provenance of the results in ``results_folder`` (the run summary must be written already).

    Args:
        summary: The run summary (its model id, mode, outcome, trusts and ``privacy`` section are used).
        results_folder: The folder about to be zipped; every regular file in it but
            ``provenance.json`` is hashed.
        job_id: NVFlare's job id.
        job_type: ``standard``, ``evaluation``, ``fed_opt`` (or an app's own), if known.
        rounds_completed: Rounds aggregated.
        settings: :func:`job_settings` of the job's configs.
        app_code: :func:`app_code_hash` of the app that ran.
        resource_spec: The job's ``resource_spec`` (GPUs asked for), if any.
        installed: Versions (default: :func:`versions`).
        created_at: ISO time (default: now, UTC).

    Returns:
        The provenance, JSON-able, with its ``digest``.
    """
    trusts = summary.get("trusts")
    trust_names = sorted({str(v) for v in trusts.values()}) if isinstance(trusts, dict) else []
    privacy = dict(settings.get("privacy") or {})
    if "privacy" in summary:
        privacy["run_summary"] = public_args(summary["privacy"])
    provenance: dict[str, Any] = {
        "format": FORMAT,
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "model_id": summary.get("model_id"),
        "job_id": job_id,
        "job_type": job_type,
        "flip_mode": summary.get("flip_mode"),
        "outcome": summary.get("outcome"),
        "rounds_completed": rounds_completed,
        "trusts": trust_names,
        "aggregation": settings.get("aggregation"),
        "privacy": privacy,
        "resource_spec": public_args(resource_spec) if resource_spec else None,
        "versions": dict(installed if installed is not None else versions()),
        "app_code": dict(app_code) if app_code is not None else None,
        "files": results_file_hashes(results_folder),
    }
    provenance = json.loads(json.dumps(_plain(provenance), allow_nan=False))
    provenance["digest"] = {"sha256": digest_of(provenance), "method": DIGEST_METHOD}
    return provenance


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: non-finite floats and unknown objects as text (nothing redacted)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def write_provenance(results_folder: Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``provenance.json`` into the results folder (replacing a link there, never writing through it)."""
    target = results_folder / PROVENANCE_FILE
    if target.is_symlink():
        target.unlink()
    write_atomically(target, json.dumps(provenance, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return target


# ---------------------------------------------------------------------- verifying a zip


@dataclass
class Verification:
    """What :func:`verify_results_zip` found.

    Attributes:
        provenance: The provenance read from the zip (None if absent or unreadable).
        verified: Members whose SHA-256 and size match the provenance.
        tampered: ``(member, what differs)`` for members that do not match or cannot be read.
        missing: Files the provenance lists that the zip does not hold.
        extra: Members the provenance does not list.
        problems: Everything else wrong: no or bad provenance, an edited provenance, unsafe or
            repeated member names, an app code hash or digest that differs from the expected one.
    """

    provenance: dict[str, Any] | None = None
    verified: list[str] = field(default_factory=list)
    tampered: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing at all is wrong."""
        return self.provenance is not None and not (self.tampered or self.missing or self.extra or self.problems)


def safe_name(name: str) -> str:
    """``name`` for printing: control and non-ASCII characters escaped."""
    return name.encode("unicode_escape").decode("ascii")


def is_unsafe_member(name: str) -> bool:
    """Whether a zip member name could write outside the folder it is extracted to (or is not a plain path)."""
    if not name or "\0" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part in ("..", "") for part in PurePosixPath(name).parts) or ".." in name.split("/")


def _read_provenance(archive: zipfile.ZipFile, info: zipfile.ZipInfo, result: Verification) -> dict[str, Any] | None:
    if info.file_size > MAX_PROVENANCE_BYTES:
        result.problems.append(f"{PROVENANCE_FILE} declares {info.file_size} bytes (more than {MAX_PROVENANCE_BYTES})")
        return None
    try:
        with archive.open(info) as source:
            raw = source.read(MAX_PROVENANCE_BYTES + 1)
        data = json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError, ValueError) as exc:
        result.problems.append(f"{PROVENANCE_FILE} cannot be read ({type(exc).__name__})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        result.problems.append(f"{PROVENANCE_FILE} is not a provenance object with a 'files' table")
        return None
    return data


def _expected(entry: Any) -> tuple[str, int] | None:
    if not isinstance(entry, dict):
        return None
    digest, size = entry.get("sha256"), entry.get("size")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    return digest, size


def verify_results_zip(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_digest: str | None = None,
    app_dir: str | os.PathLike[str] | None = None,
) -> Verification:
    """Check a results zip against its ``provenance.json``, streaming each member through SHA-256.

    Nothing is extracted to disk. A member whose declared size differs from the recorded one is
    reported without being read; no member is read past its recorded size; at most ``max_bytes``
    are read in all.

    Args:
        path: The results zip.
        max_bytes: Uncompressed bytes to hash at most; members beyond are reported as not checked.
        expect_digest: The provenance digest from the server's log, if known; a different one is a problem.
        app_dir: An app folder (``JOB/app``) whose code hash must equal the provenance's ``app_code``.

    Returns:
        The findings (see :attr:`Verification.ok`).

    Raises:
        ResultsZipError: The file is not a zip or cannot be read at all.
    """
    result = Verification()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise ResultsZipError(f"{safe_name(str(path))} is not a readable zip file ({type(exc).__name__}).") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ResultsZipError(f"the zip has {len(infos)} members, more than {MAX_MEMBERS}: not checked.")
        names = [info.filename for info in infos]
        repeated = sorted({n for n in names if names.count(n) > 1})
        result.problems += [f"member {safe_name(n)!r} appears more than once" for n in repeated]
        result.problems += [f"unsafe member name {safe_name(n)!r}" for n in sorted(set(names)) if is_unsafe_member(n)]
        provenance_infos = [info for info in infos if info.filename == PROVENANCE_FILE]
        if not provenance_infos:
            result.problems.append(f"the zip holds no {PROVENANCE_FILE}")
            return result
        provenance = _read_provenance(archive, provenance_infos[-1], result)
        if provenance is None:
            return result
        result.provenance = provenance
        _check_digest(provenance, expect_digest, result)
        files: dict[str, Any] = provenance["files"]
        budget = max_bytes
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            if name == PROVENANCE_FILE or name in seen:
                continue
            seen.add(name)
            expected = _expected(files.get(name)) if name in files else None
            if name not in files:
                result.extra.append(name)
                continue
            if expected is None:
                result.problems.append(f"{PROVENANCE_FILE} has no valid sha256/size for {safe_name(name)!r}")
                continue
            digest, size = expected
            if info.file_size != size:
                result.tampered.append((name, f"size {info.file_size} bytes, recorded {size}"))
                continue
            if size > budget:
                result.problems.append(f"{safe_name(name)!r} not checked: over the --max-bytes limit")
                continue
            budget -= size
            try:
                with archive.open(info) as source:
                    actual, read = _stream_sha256(source, limit=size)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                result.tampered.append((name, f"cannot be read ({type(exc).__name__}: corrupt or altered data)"))
                continue
            if read != size or actual != digest:
                result.tampered.append(
                    (name, "SHA-256 differs" if read == size else f"{read} bytes read, recorded {size}")
                )
            else:
                result.verified.append(name)
        result.missing = sorted(set(files) - seen)
        if app_dir is not None:
            _check_app(provenance, Path(app_dir), result)
    return result


def _check_digest(provenance: dict[str, Any], expect_digest: str | None, result: Verification) -> None:
    recorded = provenance.get("digest")
    value = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not isinstance(value, str):
        result.problems.append(f"{PROVENANCE_FILE} has no digest")
    else:
        try:
            actual = digest_of(provenance)
        except ValueError:
            actual = ""
        if actual != value:
            result.problems.append(f"{PROVENANCE_FILE} was edited: its content does not match its digest")
    if expect_digest is not None and expect_digest.strip().lower() != (value or ""):
        result.problems.append("the provenance digest is not the expected one (--expect-digest)")


def _check_app(provenance: dict[str, Any], app_dir: Path, result: Verification) -> None:
    recorded = provenance.get("app_code")
    local = app_code_hash(app_dir)
    if local is None:
        result.problems.append("--app: the folder has no config/ or custom/ to hash")
    elif not isinstance(recorded, dict) or recorded.get("sha256") != local["sha256"]:
        result.problems.append("--app: the app's code hash differs from the one that ran")
