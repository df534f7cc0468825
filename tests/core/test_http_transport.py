"""ServiceClient's connection pool (http.client under httpx) against raw loopback servers.

What a general-purpose pool would handle for us and this one must too: keep-alive reuse, a server
that closes an idle connection, ``Connection: close``, chunked and compressed answers, the bound
on open connections.
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from flip_nvflare.core.http import ServiceClient
from flip_nvflare.errors import FlipServiceUnavailable
from flip_nvflare.retry import RetryPolicy


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_request(conn: socket.socket, pending: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in pending:
        data = conn.recv(65536)
        if not data:
            return None
        pending += data
    end = pending.index(b"\r\n\r\n") + 4
    head = bytes(pending[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(pending) < end + length:
        data = conn.recv(65536)
        if not data:
            return None
        pending += data
    request = bytes(pending[: end + length])
    del pending[: end + length]
    return request


@contextmanager
def serve(answer: Callable[[bytes, Server], tuple[bytes, bool]]) -> Iterator[Server]:
    """A server calling ``answer(request, server)`` -> (bytes to send, close the connection after)."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(url=f"http://127.0.0.1:{listener.getsockname()[1]}")
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        pending = bytearray()
        with conn:
            while not stop.is_set():
                request = _read_request(conn, pending)
                if request is None:
                    break
                with server.lock:
                    server.requests.append(request)
                data, close = answer(request, server)
                conn.sendall(data)
                if close:
                    break
        with server.lock:
            server.open_now -= 1

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with server.lock:
                server.connections += 1
                server.open_now += 1
                server.most_open = max(server.most_open, server.open_now)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def client(url: str, **kwargs: object) -> ServiceClient:
    options: dict[str, object] = {"timeout": 5.0, "retry": RetryPolicy.single(), **kwargs}
    return ServiceClient(service="flip-api", base_url=url, key_header="X-Key", key="k", **options)  # type: ignore[arg-type]


def test_connections_are_kept_alive_and_the_request_is_whole() -> None:
    with serve(lambda request, server: (ok(), False)) as server:
        c = client(server.url)
        for n in range(5):
            assert c.request("POST", "/x", json_body={"n": n}).json() == {"ok": True}
        c.close()
    assert server.connections == 1
    head, _, body = server.requests[-1].partition(b"\r\n\r\n")
    assert body == b'{"n":4}'
    assert b"\r\nX-Key: k\r\n" in head and head.startswith(b"POST /x HTTP/1.1\r\n")


@pytest.mark.parametrize("how", ["silently", "saying so"])
def test_a_connection_the_server_closed_is_not_reused(how: str) -> None:
    def answer(request: bytes, server: Server) -> tuple[bytes, bool]:
        return (ok() if how == "silently" else ok(extra=b"Connection: close\r\n")), True

    with serve(answer) as server:
        c = client(server.url)
        for _ in range(3):
            assert c.request("GET", "/x").json() == {"ok": True}
            threading.Event().wait(0.05)  # the server's close reaches the idle connection
    assert server.connections == 3


def test_chunked_and_compressed_answers_are_read_whole() -> None:
    packed = gzip.compress(b'{"a": "' + b"x" * 5000 + b'"}')

    def answer(request: bytes, server: Server) -> tuple[bytes, bool]:
        if b" /chunked " in request:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n", False
        return ok(packed, b"Content-Encoding: gzip\r\n"), False

    with serve(answer) as server:
        c = client(server.url)
        assert c.request("GET", "/chunked").json() == [1, 2]
        assert c.request("GET", "/gzip").json() == {"a": "x" * 5000}
        assert c.request("GET", "/chunked").json() == [1, 2]
    assert server.connections == 1


def test_open_connections_stay_within_the_bound() -> None:
    gate = threading.Barrier(3, timeout=0.3)

    def answer(request: bytes, server: Server) -> tuple[bytes, bool]:
        try:
            gate.wait()  # hold the first answers until several calls are waiting
        except threading.BrokenBarrierError:
            pass
        return ok(), False

    with serve(answer) as server:
        c = client(server.url, max_connections=2)
        threads = [threading.Thread(target=c.request, args=("GET", "/x")) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert len(server.requests) == 6
    assert server.most_open <= 2


def test_a_refused_connection_is_an_outage() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(FlipServiceUnavailable, match="ConnectError"):
        client(f"http://127.0.0.1:{port}").request("GET", "/x")
