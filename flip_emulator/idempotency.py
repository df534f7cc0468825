"""The emulated hub's ``Idempotency-Key`` handling: one answer per key, route and model.

flip-nvflare sends the same key (a UUID4) on every attempt of one logical hub write. The first
request with a key is handled as usual; if it succeeds, its answer is kept, and any later request
with that key for the same route (``hub.status``, ``hub.metrics``, ``hub.logs``) and model gets that
answer again without being recorded again. A later request that differs (another status, another
body) is answered 422, as the IETF ``Idempotency-Key`` draft asks. Repeats of both kinds are counted
per key (:class:`~flip_emulator.store.DuplicateRecord`); request bodies are kept only as digests.

The keys live in memory for one emulator run: a restart or ``POST /admin/reset`` forgets them.
This module does not import FastAPI, so importing :mod:`flip_emulator.state` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flip_emulator.store import DuplicateRecord
from flip_nvflare.constants import IDEMPOTENCY_KEY_HEADER

#: Response header set on an answer given again for a repeated key.
REPLAYED_HEADER = "Idempotent-Replayed"


def check_key(value: str) -> str:
    """Return ``value`` if it is a UUID in its usual form (``str(uuid.uuid4())``), in lower case.

    Raises:
        ValueError: It is not; the message names the header.
    """
    try:
        parsed = uuid.UUID(value) if len(value) == 36 else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value.lower():
        raise ValueError(f"{IDEMPOTENCY_KEY_HEADER} must be a UUID such as str(uuid.uuid4()).")
    return value.lower()


def request_digest(*parts: Any) -> str:
    """A digest of what identifies one request (its JSON body compared with keys in any order)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """A hub answer as it is sent (and kept for repeats).

    Attributes:
        status_code: The HTTP status.
        body: The body bytes.
        media_type: The content type, if any.
        replayed: The answer of an earlier request with the same key.
    """

    status_code: int
    body: bytes = b""
    media_type: str | None = None
    replayed: bool = False

    @classmethod
    def json(cls, status_code: int, content: Any) -> Answer:
        """A JSON answer, encoded as FastAPI encodes it."""
        body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status_code, body, "application/json")


@dataclass
class _Entry:
    digest: str
    answer: Answer
    count: int = 0
    conflicts: int = 0
    order: int = 0


class IdempotencyLedger:
    """The keys the hub has answered in this run, by route and model (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self._repeats = 0

    def run(self, route: str, model_id: str, key: str, digest: str, handle: Callable[[], Answer]) -> Answer:
        """Answer one request carrying ``key``: handle it, or answer it as the first one was.

        Requests with keys are handled one at a time, so a repeat that arrives while the first is
        still being handled waits for its answer.

        Args:
            route: ``hub.status``, ``hub.metrics`` or ``hub.logs``.
            model_id: The model (canonical UUID text).
            key: The key, checked by :func:`check_key`.
            digest: :func:`request_digest` of what identifies the request.
            handle: Handles (and records) the request; may raise the route's HTTP errors.

        Returns:
            The new answer (kept if it is a success), the kept answer (``replayed``), or 422 if the
            key came with a different request.
        """
        with self._lock:
            entry = self._entries.get((route, model_id, key))
            if entry is None:
                answer = handle()
                if 200 <= answer.status_code < 300:
                    self._entries[(route, model_id, key)] = _Entry(digest, answer)
                return answer
            if entry.count == 0:
                self._repeats += 1
                entry.order = self._repeats
            entry.count += 1
            if entry.digest != digest:
                entry.conflicts += 1
                return Answer.json(
                    422,
                    {
                        "detail": f"{IDEMPOTENCY_KEY_HEADER} {key} was already used for a different request "
                        f"to this route for model {model_id}."
                    },
                )
            return replace(entry.answer, replayed=True)

    def duplicates(self, model_id: str) -> list[DuplicateRecord]:
        """The repeated keys of ``model_id``, in the order of their first repeat."""
        with self._lock:
            found = [
                (entry.order, DuplicateRecord(route, key, entry.count, entry.conflicts))
                for (route, model, key), entry in self._entries.items()
                if model == model_id and entry.count
            ]
        return [record for _, record in sorted(found, key=lambda item: item[0])]

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._entries.clear()
            self._repeats = 0
