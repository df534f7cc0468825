"""``flip-nvflare emulate``: run the FLIP services emulator, or show what it received for a model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from flip_emulator.config import (
    DEFAULT_BUCKET,
    DEFAULT_DATA_DIR,
    DEFAULT_HUB_PORT,
    DEFAULT_NET_ID,
    DEFAULT_TRUST_PORT,
    HUB_KEY_ENV,
    TRUST_KEY_ENV,
    EmulatorConfig,
    EmulatorConfigError,
    check_model_id,
    parse_fault_option,
    parse_model_option,
)
from flip_nvflare.constants import HubApi
from flip_nvflare.core.settings import is_loopback_host

_EPILOG = """\
examples:
  flip-nvflare emulate --model 3fa85f64-5717-4562-b3fc-2c963f66afa6=Trust_1,Trust_2 --s3
  flip-nvflare emulate --hub-api h2 --open --fault hub.metrics:error_every=3
  flip-nvflare emulate --show 3fa85f64-5717-4562-b3fc-2c963f66afa6

Keys are random per start unless given (prefer the environment variables FLIP_EMULATOR_HUB_KEY and
FLIP_EMULATOR_TRUST_KEY to flags, which other users of the machine can see). Fault routes: hub.status,
hub.metrics, hub.logs, trust.cohort, trust.download, trust.upload (or hub.*, trust.*, *); settings:
latency, error_status, error_first, error_every, error_rate, seed, hang, hang_seconds, retry_after,
lose_answer, drop_connection. Without --admin-key, the /admin routes answer only this machine, addressed
as 127.0.0.1, [::1] or localhost. See docs/emulator.md.
"""


def build_parser(prog: str = "flip-nvflare emulate") -> argparse.ArgumentParser:
    """The argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Emulate the FLIP services (Central Hub flip-api, a trust's data-access-api and imaging-api) "
        "on this machine, over real HTTP.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_argument_group("where")
    where.add_argument(
        "--host", metavar="ADDRESS", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    where.add_argument(
        "--hub-port",
        metavar="PORT",
        type=int,
        default=DEFAULT_HUB_PORT,
        help="hub port, 0 = any free (default: %(default)s)",
    )
    where.add_argument(
        "--trust-port",
        metavar="PORT",
        type=int,
        default=DEFAULT_TRUST_PORT,
        help="trust port, 0 = any free (default: %(default)s)",
    )
    where.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="records, images and uploads (default: %(default)s)",
    )
    where.add_argument(
        "--synthetic-dir", metavar="DIR", type=Path, help="synthetic population (default: DATA_DIR/synthetic)"
    )
    where.add_argument(
        "--images-dir", metavar="DIR", type=Path, help="shared images volume, IMAGES_DIR (default: DATA_DIR/images)"
    )
    where.add_argument(
        "--ready-file", metavar="FILE", type=Path, help="write a JSON description here once the services answer"
    )

    hub = parser.add_argument_group("hub")
    hub.add_argument("--hub-api", choices=[h.value for h in HubApi], default="h1", help="hub generation (default: h1)")
    hub.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID=Trust_1,Trust_2",
        help="register a model and the trusts linked to it (repeatable)",
    )
    hub.add_argument("--open", action="store_true", help="accept any model id, trust name and project envelope")

    trust = parser.add_argument_group("trust")
    trust.add_argument(
        "--net-id", metavar="ID", default=DEFAULT_NET_ID, help="the trust's NET_ID (default: %(default)s)"
    )
    trust.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the synthetic population (default: 0)")
    trust.add_argument(
        "--subjects", metavar="N", type=int, default=60, help="people in the synthetic population (default: 60)"
    )
    trust.add_argument(
        "--threshold", metavar="N", type=int, default=10, help="disclosure threshold in subjects (default: 10)"
    )
    trust.add_argument(
        "--download-concurrency",
        metavar="N",
        type=int,
        default=1,
        help="downloads served at once, 0 = no limit (default: 1)",
    )
    trust.add_argument(
        "--download-latency",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="seconds each non-cached download takes (default: 0)",
    )
    trust.add_argument(
        "--query-timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="cohort query time limit in s (default: 10)",
    )

    s3 = parser.add_argument_group("S3")
    s3.add_argument("--s3", action="store_true", help="also start moto's S3 server with the results bucket")
    s3.add_argument("--s3-port", metavar="PORT", type=int, default=0, help="S3 port, 0 = any free (default: 0)")
    s3.add_argument(
        "--bucket",
        metavar="S3_URL",
        default=DEFAULT_BUCKET,
        help="results bucket s3://bucket[/prefix] (default: %(default)s)",
    )

    keys = parser.add_argument_group("keys and faults")
    keys.add_argument("--hub-key", metavar="KEY", help=f"hub key (default: ${HUB_KEY_ENV} or random)")
    keys.add_argument("--trust-key", metavar="KEY", help=f"trust key (default: ${TRUST_KEY_ENV} or random)")
    keys.add_argument(
        "--admin-key",
        metavar="KEY",
        help="require this key on /admin routes (default: $FLIP_EMULATOR_ADMIN_KEY or none)",
    )
    keys.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ROUTE:k=v,...",
        help="inject a fault from the start (repeatable)",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--access-log", action="store_true", help="print one line per HTTP request")
    out.add_argument("--show", metavar="MODEL_ID", help="print what the emulator in DATA_DIR received for a model")
    out.add_argument("--json", action="store_true", help="with --show: print JSON")
    # Used by flip_emulator.handle: stop when the process that started us is gone.
    parser.add_argument("--watch-parent", action="store_true", help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into an :class:`EmulatorConfig`.

    Raises:
        EmulatorConfigError: A value is malformed.
    """
    models: dict[str, tuple[str, ...]] = {}
    for text in args.model:
        model_id, trusts = parse_model_option(text)
        models[model_id] = tuple(dict.fromkeys(models.get(model_id, ()) + trusts))
    faults = dict(parse_fault_option(text) for text in args.fault)
    return EmulatorConfig(
        host=args.host,
        hub_port=args.hub_port,
        trust_port=args.trust_port,
        data_dir=args.data_dir,
        synthetic_dir=args.synthetic_dir,
        images_dir=args.images_dir,
        hub_api=HubApi(args.hub_api),
        models=models,
        open=args.open,
        s3=args.s3,
        s3_port=args.s3_port,
        bucket=args.bucket,
        net_id=args.net_id,
        seed=args.seed,
        subjects=args.subjects,
        threshold=args.threshold,
        download_concurrency=args.download_concurrency,
        download_latency=args.download_latency,
        query_timeout=args.query_timeout,
        hub_key=args.hub_key,
        trust_key=args.trust_key,
        admin_key=args.admin_key,
        faults=faults,
        ready_file=args.ready_file,
        access_log=args.access_log,
    )


def show(model_id: str, data_dir: Path, *, as_json: bool, out: TextIO) -> int:
    """Print what the emulator with ``data_dir`` received for ``model_id``; return an exit code."""
    from flip_emulator.report import format_records
    from flip_emulator.state import RECORDS_FILE
    from flip_emulator.store import RecordStore

    try:
        canonical = check_model_id(model_id)
    except EmulatorConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = data_dir.expanduser().resolve() / RECORDS_FILE
    if not path.is_file():
        print(
            f"error: no emulator records in {path.parent}; start the emulator with --data-dir {data_dir} first "
            "(or pass the --data-dir it used).",
            file=sys.stderr,
        )
        return 1
    store = RecordStore(path, read_only=True)
    try:
        records = store.records(canonical)
    finally:
        store.close()
    if as_json:
        print(json.dumps(records.to_json(), indent=2), file=out)
    else:
        print(format_records(records), file=out)
    return 0 if records.model is not None or records.statuses else 1


def banner(server: object, out: TextIO) -> None:
    """Print the start-up summary and the job environment."""
    from flip_emulator.server import EmulatorServer

    assert isinstance(server, EmulatorServer) and server.emulator is not None
    assert server.hub is not None and server.trust is not None
    emulator, config = server.emulator, server.config
    population = emulator.synthetic
    w = out.write
    w(
        f"FLIP services emulator ready in {server.started_in or 0:.2f} s "
        f"(hub API {emulator.settings.hub_api.value}; {population.subjects} people, {population.studies} imaging "
        f"studies, seed {population.seed}; disclosure threshold {emulator.settings.threshold})\n\n"
    )
    w(f"  hub    flip-api          {server.hub.url}/api\n")
    w(f"  trust  data-access-api   {server.trust.url}/cohort/dataframe\n")
    w(f"         imaging-api       {server.trust.url}/download/images/{config.net_id}\n")
    if server.s3 is not None:
        w(f"  s3     moto              {server.s3.url}  (bucket {config.bucket})\n")
    w(f"  data   {config.data_dir}  (records in emulator.sqlite)\n\n")
    models = emulator.store.models()
    if models:
        w("Models:\n")
        for model in models:
            w(f"  {model.model_id}  {', '.join(model.trusts)}\n")
    if emulator.settings.open:
        w("Open mode: any model id, trust name and project envelope is accepted.\n")
    elif not models:
        w("No models registered: add --model ID=Trust_1,Trust_2, or POST /admin/models, or use --open.\n")
    w(f'\nIn config_fed_client.json: "project_id": "{emulator.default_envelope}"\n\n')
    w("# Environment of a prod-mode job (the keys are what this emulator expects):\n")
    for name, value in server.env().items():
        w(f"export {name}={shlex.quote(value)}\n")
    if server.s3 is None:
        w("# Results upload: restart with --s3 for a local S3 server and bucket.\n")
    w(
        "\nWhat a model received: flip-nvflare emulate --show MODEL_ID "
        f"--data-dir {shlex.quote(str(config.data_dir))}\n"
        f"Admin API: {server.hub.url}/admin/info  (routes at {server.hub.url}/docs). Press Ctrl-C to stop.\n"
    )
    out.flush()


def exposure_warnings(server: object) -> list[str]:
    """Warnings about what the running emulator exposes, and to whom (printed to stderr at start).

    One for ``--open`` (what it accepts, and the admin routes and recorded data on its ports) and one
    for listening on an address other machines can reach.
    """
    from flip_emulator.server import EmulatorServer

    assert isinstance(server, EmulatorServer) and server.emulator is not None
    assert server.hub is not None and server.trust is not None
    config = server.config
    hub, trust = server.hub.port, server.trust.port
    admins = (
        "to whoever holds the --admin-key"
        if config.admin_key
        else "to every process on this machine (start with --admin-key to require a key)"
    )
    warnings = []
    if server.emulator.settings.open:
        warnings.append(
            "Warning: --open turns off the model, trust and project checks: with the service keys, the hub on "
            f"port {hub} records statuses, metrics and logs for any model id and trust name, and the trust on port "
            f"{trust} answers cohort queries and image downloads for any project envelope. The /admin routes on "
            f"ports {hub} and {trust} (models, faults, settings, reset) and the data recorded there "
            "(/admin/records, /admin/requests, /admin/cohort-queries, /admin/downloads, /admin/uploads) are open "
            f"{admins}."
        )
    if not is_loopback_host(config.host):
        s3 = f" and moto's S3 server on port {server.s3.port}, which takes any credentials," if server.s3 else ""
        warnings.append(
            f"Warning: listening on {config.host}: other machines can reach the hub on port {hub}, the trust on "
            f"port {trust}{s3} (the hub and trust routes with their keys; the /admin routes "
            + ("with the --admin-key)." if config.admin_key else "not without --admin-key: they answer 403).")
        )
    return warnings


def _watch_parent(stop: threading.Event) -> None:
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="flip-emulator-watch-parent", daemon=True).start()


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: wait for KeyboardInterrupt instead
        previous = {}
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None, *, prog: str = "flip-nvflare emulate") -> int:
    """Run ``flip-nvflare emulate`` with ``argv`` (the arguments after ``emulate``); return the exit code."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.show:
        return show(args.show, args.data_dir, as_json=args.json, out=sys.stdout)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if args.access_log else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    from flip_emulator.server import EmulatorServer, EmulatorStartError

    try:
        server = EmulatorServer(config_from_args(args))
        server.start()
    except (EmulatorConfigError, EmulatorStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, EmulatorConfigError) else 1
    try:
        for warning in exposure_warnings(server):
            print(warning, file=sys.stderr)
        sys.stderr.flush()
        banner(server, sys.stdout)
        stop = threading.Event()
        if args.watch_parent:
            _watch_parent(stop)
        _wait_for_signal(stop)
    finally:
        print("Stopping the emulator...", file=sys.stderr)
        server.stop()
    return 0
