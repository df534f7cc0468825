"""What the HTTP layer and the settings let out, tried as an attacker or a careless operator would.

Keys with newlines or control characters, a server that drips bytes, an answer larger than any
FLIP answer should be, URLs with user info, query or fragment, a NET_ID that is a path. Network
cases run over real sockets on 127.0.0.1: the FLIP services emulator, or a raw socket server here.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import ModelStatus
from flip_nvflare.core.http import ServiceClient
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.core.settings import SettingsReader, read_hub_settings, read_trust_settings
from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipConfigError,
    FlipError,
    FlipHTTPError,
    FlipInvalidResponse,
    FlipRequestRejected,
    FlipServiceUnavailable,
    format_traceback,
)
from flip_nvflare.retry import RetryPolicy

COHORT_SQL = "SELECT io.person_id, io.accession_id FROM omop.image_occurrence io ORDER BY io.image_occurrence_id"
MODEL = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def _unique_key() -> str:
    return "k3y-" + uuid.uuid4().hex


# --------------------------------------------------------------------------- keys


def test_a_key_read_from_a_secret_file_with_a_trailing_newline_works(emu: EmulatorHandle) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    hub_key = emu.env()["INTERNAL_SERVICE_KEY"]
    trust_key = emu.env()["TRUST_INTERNAL_SERVICE_KEY"]
    backend = emu.prod_backend(hub_key=hub_key + "\n", trust_key="  " + trust_key + "\r\n")
    backend.update_status(model, ModelStatus.INITIATED)
    assert len(backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)) > 0
    assert [r.status for r in emu.records(model).statuses] == ["INITIATED"]


@pytest.mark.parametrize("bad", ["\x00", "\n", "\t", "\x7f", "é", "\u2028"])
def test_a_key_with_a_control_or_non_ascii_character_is_refused_naming_the_variable_not_the_value(bad: str) -> None:
    key = _unique_key()
    spoiled = key[:6] + bad + key[6:]
    env = {"FLIP_API_INTERNAL_URL": "http://127.0.0.1:9/api", "INTERNAL_SERVICE_KEY": spoiled}
    with pytest.raises(FlipConfigError) as err:
        read_hub_settings(SettingsReader({}, env))
    assert "INTERNAL_SERVICE_KEY" in str(err.value)
    assert key[:6] not in str(err.value) and key[6:] not in str(err.value)
    trust_env = {"DATA_ACCESS_API_URL": "http://127.0.0.1:9", "TRUST_INTERNAL_SERVICE_KEY": spoiled}
    with pytest.raises(FlipConfigError, match="TRUST_INTERNAL_SERVICE_KEY") as err:
        read_trust_settings(SettingsReader({}, trust_env), service="data-access-api")
    assert key[6:] not in format_traceback(err.value)


def test_a_bad_key_fails_before_any_request_and_no_text_quotes_it(emu: EmulatorHandle) -> None:
    key = _unique_key()
    before = len(emu.requests("hub"))
    backend = emu.prod_backend(hub_key=key + "\nX-Injected: 1")
    with pytest.raises(FlipConfigError) as err:
        backend.update_status(MODEL, ModelStatus.INITIATED)
    assert key not in format_traceback(err.value)
    assert len(emu.requests("hub")) == before


def test_a_bad_header_name_is_refused_by_name() -> None:
    env = {
        "FLIP_API_INTERNAL_URL": "http://127.0.0.1:9",
        "INTERNAL_SERVICE_KEY": "k",
        "INTERNAL_SERVICE_KEY_HEADER": "X Key\n",
    }
    with pytest.raises(FlipConfigError, match="INTERNAL_SERVICE_KEY_HEADER"):
        read_hub_settings(SettingsReader({}, env))


def test_reprs_mask_every_key() -> None:
    key = _unique_key()
    env = {
        "FLIP_API_INTERNAL_URL": "http://127.0.0.1:9/api",
        "INTERNAL_SERVICE_KEY": key,
        "DATA_ACCESS_API_URL": "http://127.0.0.1:9",
        "TRUST_INTERNAL_SERVICE_KEY": key,
    }
    reader = SettingsReader({"INTERNAL_SERVICE_KEY": key, "TRUST_INTERNAL_SERVICE_KEY": key}, env)
    hub = read_hub_settings(reader)
    trust = read_trust_settings(reader, service="data-access-api")
    client = ServiceClient(
        service="flip-api", base_url=hub.url, key_header=hub.key_header, key=hub.key, timeout=1.0, retry=RetryPolicy()
    )
    shown = [repr(hub), repr(trust), repr(reader), repr(client), str(hub), str(trust)]
    assert all(key not in text for text in shown)
    assert all("***" in text for text in shown[:4])


def test_no_key_reaches_a_log_line_an_error_or_the_hub(emu: EmulatorHandle, caplog: pytest.LogCaptureFixture) -> None:
    """Wrong keys (so every failure path runs): no log record at any level and no error text carries one."""
    caplog.set_level(logging.DEBUG)
    hub_key, trust_key = _unique_key(), _unique_key()
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = emu.prod_backend(hub_key=hub_key, trust_key=trust_key, retry=RetryPolicy.single())
    failures: list[FlipError] = []
    for call in (
        lambda: backend.update_status(model, ModelStatus.INITIATED),
        lambda: backend.send_metrics("site-1", model, "LOSS", 1.0, 0),
        lambda: backend.send_handled_exception("boom", "site-1", model),
        lambda: backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL),
        lambda: backend.get_by_accession_number(emu.encrypted_project_id, "ACC1"),
    ):
        with pytest.raises(FlipAuthenticationError) as err:
            call()
        failures.append(err.value)
    assert len(failures) == 5
    assert caplog.records
    for text in [format_traceback(f) for f in failures] + [r.getMessage() for r in caplog.records]:
        assert hub_key not in text and trust_key not in text
    assert emu.records(model).logs == []  # a refused key delivers nothing to the hub


# --------------------------------------------------------------------------- raw socket servers


@dataclass
class RawServer:
    """A loopback server that answers every connection with ``respond(conn)``; records what it could send."""

    respond: Callable[[socket.socket, RawServer], None]
    port: int = 0
    sent: list[int] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _read_request(conn: socket.socket) -> None:
    data = b""
    conn.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


@contextmanager
def raw_server(respond: Callable[[socket.socket, RawServer], None]) -> Iterator[RawServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = RawServer(respond, port=listener.getsockname()[1])
    listener.settimeout(0.2)

    def serve() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                _read_request(conn)
                try:
                    respond(conn, server)
                except OSError:
                    server.disconnected.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        thread.join(timeout=10)
        listener.close()


def _drip(payload: bytes, every: float = 0.25) -> Callable[[socket.socket, RawServer], None]:
    """Send ``payload`` one byte every ``every`` seconds (bounded: at most len(payload) bytes)."""

    def respond(conn: socket.socket, server: RawServer) -> None:
        sent = 0
        for i in range(len(payload)):
            if server.stop.wait(every):
                break
            conn.sendall(payload[i : i + 1])
            sent += 1
        server.sent.append(sent)

    return respond


def _client(url: str, timeout: float, **kwargs: object) -> ServiceClient:
    return ServiceClient(
        service="flip-api",
        base_url=url,
        key_header="X-Key",
        key="k",
        timeout=timeout,
        retry=RetryPolicy.single(),
        **kwargs,  # type: ignore[arg-type]
    )


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_a_server_that_drips_its_headers_is_cut_at_the_total_deadline() -> None:
    """Each byte (every 0.1 s) arrives well within a read timeout; only a per-attempt total deadline stops the call."""
    with raw_server(_drip(ANSWER, every=0.1)) as server:
        client = _client(server.url, timeout=0.4)
        with pytest.raises(FlipServiceUnavailable, match="Timeout"):
            client.request("GET", "/slow")
        server.stop.set()
    assert server.sent and server.sent[0] < len(ANSWER)  # cut long before the answer was complete


def test_a_server_that_drips_its_body_is_cut_at_the_total_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"

    def respond(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(head)
        _drip(b'{"x": "' + b"a" * 31 + b'"}', every=0.1)(conn, server)

    with raw_server(respond) as server:
        with pytest.raises(FlipServiceUnavailable, match="Timeout"):
            _client(server.url, timeout=0.4).request("GET", "/slow")
        server.stop.set()
    assert server.sent and server.sent[0] < 40


def test_a_declared_huge_answer_is_refused_unread() -> None:
    def respond(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
        conn.sendall(b"[" * 65536)
        server.sent.append(65536)

    with raw_server(respond) as server:
        with pytest.raises(FlipInvalidResponse, match="larger than 65536 bytes"):
            _client(server.url, timeout=5.0, max_body_bytes=65536).request("GET", "/big")


def test_an_undeclared_huge_answer_is_cut_at_the_bound() -> None:
    def respond(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 16384
        sent = 0
        for _ in range(640):  # bounded: 10 MiB at most
            if server.stop.is_set():
                break
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        server.sent.append(sent)

    with raw_server(respond) as server:
        with pytest.raises(FlipInvalidResponse, match="larger than"):
            _client(server.url, timeout=5.0, max_body_bytes=100_000).request("GET", "/big")
        server.stop.set()


def test_the_cohort_call_has_its_own_larger_bound(emu: EmulatorHandle) -> None:
    small = emu.prod_backend(max_response_bytes=1024)
    assert len(small.get_dataframe(emu.encrypted_project_id, COHORT_SQL)) > 10  # the cohort is far over 1 KiB
    tight = emu.prod_backend(max_cohort_bytes=1024)
    with pytest.raises(FlipInvalidResponse, match="larger than 1024 bytes"):
        tight.get_dataframe(emu.encrypted_project_id, COHORT_SQL)


def test_a_request_that_cannot_be_sent_is_a_typed_error_that_quotes_nothing() -> None:
    """A header value httpx refuses would otherwise surface as LocalProtocolError quoting it."""
    secret = _unique_key()
    with raw_server(lambda conn, server: conn.sendall(ANSWER)) as server:
        client = ServiceClient(
            service="flip-api",
            base_url=server.url,
            key_header="X-Key",
            key=secret + "\n",
            timeout=5.0,
            retry=RetryPolicy.single(),
        )
        with pytest.raises(FlipHTTPError, match="could not be sent") as err:
            client.request("GET", "/x")
    assert secret not in format_traceback(err.value)


# --------------------------------------------------------------------------- what trust answers may say


def _answer(status: int, detail: str) -> Callable[[socket.socket, RawServer], None]:
    body = json.dumps({"detail": detail}).encode()

    def respond(conn: socket.socket, server: RawServer) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)

    return respond


def test_a_data_access_answer_echoing_a_value_stays_in_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    """The service echoes part of the query (a patient's name), so redacting the whole query is not enough."""
    caplog.set_level(logging.DEBUG, logger="flip_nvflare")
    query = "SELECT person_id FROM omop.person WHERE person_source_value = Jane Smithers"
    with raw_server(_answer(400, "no such column: Smithers")) as server:
        backend = FLIPStandardProd(data_access_api_url=server.url, trust_key="k", env={}, retry=RetryPolicy.single())
        with pytest.raises(FlipRequestRejected) as err:
            backend.get_dataframe("project", query)
    assert "Smithers" not in format_traceback(err.value)
    assert err.value.status_code == 400 and err.value.detail == "the service rejected the request as malformed"
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("Smithers" in line for line in debug)  # kept at the trust, for its own operators
    assert all("Smithers" not in r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)


def test_an_imaging_answer_echoing_a_path_stays_out_of_the_error(tmp_path: object) -> None:
    with raw_server(_answer(404, "/mnt/images/net-1/ACC123/scan.nii not found")) as server:
        backend = FLIPStandardProd(
            imaging_api_url=server.url, trust_key="k", net_id="net-1", env={}, retry=RetryPolicy.single()
        )
        with pytest.raises(FlipError) as err:
            backend.get_by_accession_number("project", "ACC123")
    text = format_traceback(err.value)
    assert "/mnt/images" not in text and "scan.nii" not in text


# --------------------------------------------------------------------------- URLs and NET_ID


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@127.0.0.1:8000/api",
        "http://user@127.0.0.1:8000",
        "http://127.0.0.1:8000/api?key=1",
        "http://127.0.0.1:8000/api#frag",
        "http://127.0.0.1:8000/api?",
        "ftp://127.0.0.1/",
        "http:///api",
        "http://127.0.0.1:notaport/",
        "http://127.0.0.1:8000/a pi",
    ],
)
def test_unusable_base_urls_are_refused(url: str) -> None:
    with pytest.raises(FlipConfigError, match="FLIP_API_INTERNAL_URL"):
        read_hub_settings(SettingsReader({}, {"FLIP_API_INTERNAL_URL": url, "INTERNAL_SERVICE_KEY": "k"}))


def test_plain_http_to_another_host_is_warned_about_and_loopback_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    read_hub_settings(
        SettingsReader({}, {"FLIP_API_INTERNAL_URL": "http://localhost:8000/api", "INTERNAL_SERVICE_KEY": "k"})
    )
    read_hub_settings(
        SettingsReader({}, {"FLIP_API_INTERNAL_URL": "http://[::1]:8000/api", "INTERNAL_SERVICE_KEY": "k"})
    )
    assert not caplog.records
    read_hub_settings(
        SettingsReader({}, {"FLIP_API_INTERNAL_URL": "http://flip-api.example:8000", "INTERNAL_SERVICE_KEY": "k"})
    )
    read_hub_settings(
        SettingsReader({}, {"FLIP_API_INTERNAL_URL": "https://flip-api.example", "INTERNAL_SERVICE_KEY": "k"})
    )
    assert len(caplog.records) == 1
    assert "FLIP_API_INTERNAL_URL" in caplog.records[0].getMessage() and "unencrypted" in caplog.records[0].getMessage()


@pytest.mark.parametrize("net_id", ["../other", "a/b", "..", ".", "net 1", "net\n1"])
def test_net_id_must_be_one_safe_segment(net_id: str) -> None:
    env = {"IMAGING_API_URL": "http://127.0.0.1:9", "TRUST_INTERNAL_SERVICE_KEY": "k", "NET_ID": net_id}
    with pytest.raises(FlipConfigError, match="NET_ID"):
        read_trust_settings(SettingsReader({}, env), service="imaging-api")


def test_a_backend_with_a_bad_net_id_makes_no_request(emu: EmulatorHandle) -> None:
    before = len(emu.requests("trust"))
    with pytest.raises(FlipConfigError, match="NET_ID"):
        emu.prod_backend(net_id="../net-2").get_by_accession_number(emu.encrypted_project_id, "ACC1")
    assert len(emu.requests("trust")) == before


def test_prod_backend_refuses_silly_response_bounds() -> None:
    with pytest.raises(FlipConfigError, match="max_response_bytes"):
        FLIPStandardProd(max_response_bytes=0)
    with pytest.raises(FlipConfigError, match="max_cohort_bytes"):
        FLIPStandardProd(max_cohort_bytes=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- retries deliver once


@pytest.mark.parametrize("route", ["hub.status", "hub.metrics", "hub.logs"])
@pytest.mark.parametrize("drop_connection", [True, False])
def test_a_call_whose_answer_was_lost_is_recorded_once(emu: EmulatorHandle, route: str, drop_connection: bool) -> None:
    """The hub records the call, the answer never arrives, the HTTP layer retries with the same key."""
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault(route, error_first=1, lose_answer=True, drop_connection=drop_connection, error_status=503)
    backend = emu.prod_backend(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0))
    if route == "hub.status":
        backend.update_status(model, ModelStatus.INITIATED)
    elif route == "hub.metrics":
        backend.send_metrics("site-1", model, "LOSS", 0.5, 0)
    else:
        backend.send_handled_exception("it failed", "site-1", model)
    records = emu.records(model)
    assert len(records.statuses) + len(records.metrics) + len(records.logs) == 1
    (duplicate,) = emu.duplicates(model)
    assert duplicate.route == route and duplicate.count == 1 and duplicate.conflicts == 0
    attempts = [r for r in emu.requests("hub") if r.path.startswith("/api/model/")]
    assert len(attempts) == 2 and len({r.key_headers for r in attempts}) == 1


def test_two_calls_with_the_same_content_are_both_recorded(emu: EmulatorHandle) -> None:
    """Idempotency keys are per call, not derived from content: a real repeat is not mistaken for a retry."""
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = emu.prod_backend()
    backend.send_metrics("site-1", model, "LOSS", 0.5, 0)
    backend.send_metrics("site-1", model, "LOSS", 0.5, 0)
    assert len(emu.records(model).metrics) == 2
    assert emu.duplicates(model) == []
