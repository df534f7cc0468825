"""Opaque, authenticated project envelopes, made with the standard library only.

The real hub seals the project id in an AES-GCM envelope that only the trusts can open; the FL
client forwards it unchanged. The emulator issues its own envelopes per project: the project id
is XOR-ed with an HMAC-SHA256 keystream under a random nonce and authenticated with an
HMAC-SHA256 tag (encrypt-then-MAC). The trust answers 400 to an envelope that fails
authentication, like the real service. The format is private to the emulator::

    "emu1." + base64url(nonce[12] + ciphertext + tag[16])
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "emu1."
_NONCE = 12
_TAG = 16
_MAX_TOKEN_CHARS = 4096


class EnvelopeError(ValueError):
    """An envelope is malformed or fails authentication."""


class ProjectEnvelopes:
    """Seals and opens project envelopes with one secret.

    Args:
        secret: The sealing secret (any length; 32 random bytes is typical).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the envelope secret must be at least 16 bytes")
        self._enc_key = hmac.new(secret, b"flip-emulator envelope encryption", hashlib.sha256).digest()
        self._mac_key = hmac.new(secret, b"flip-emulator envelope authentication", hashlib.sha256).digest()

    def _keystream(self, nonce: bytes, length: int) -> bytes:
        blocks = []
        for counter in range((length + 31) // 32):
            blocks.append(hmac.new(self._enc_key, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest())
        return b"".join(blocks)[:length]

    def _tag(self, nonce: bytes, ciphertext: bytes) -> bytes:
        return hmac.new(self._mac_key, PREFIX.encode() + nonce + ciphertext, hashlib.sha256).digest()[:_TAG]

    def seal(self, project_id: str) -> str:
        """Return a new envelope for ``project_id``."""
        plain = project_id.encode("utf-8")
        nonce = secrets.token_bytes(_NONCE)
        ciphertext = bytes(a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True))
        token = base64.urlsafe_b64encode(nonce + ciphertext + self._tag(nonce, ciphertext)).decode("ascii")
        return PREFIX + token.rstrip("=")

    def open(self, envelope: str) -> str:
        """Return the project id sealed in ``envelope``.

        Raises:
            EnvelopeError: The envelope is not one of ours or fails authentication.
        """
        if not isinstance(envelope, str) or not envelope.startswith(PREFIX) or len(envelope) > _MAX_TOKEN_CHARS:
            raise EnvelopeError("encrypted_project_id is not a valid envelope")
        body = envelope[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError):
            raise EnvelopeError("encrypted_project_id is not a valid envelope") from None
        if len(raw) < _NONCE + _TAG + 1:
            raise EnvelopeError("encrypted_project_id is not a valid envelope")
        nonce, ciphertext, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(nonce, ciphertext)):
            raise EnvelopeError("encrypted_project_id failed authentication")
        plain = bytes(a ^ b for a, b in zip(ciphertext, self._keystream(nonce, len(ciphertext)), strict=True))
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError("encrypted_project_id failed authentication") from None
