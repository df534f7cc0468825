from __future__ import annotations

import base64

import pytest

from flip_emulator.envelope import PREFIX, EnvelopeError, ProjectEnvelopes


@pytest.fixture
def envelopes() -> ProjectEnvelopes:
    return ProjectEnvelopes(b"0123456789abcdef0123456789abcdef")


def test_round_trip_and_opacity(envelopes: ProjectEnvelopes) -> None:
    project = "5b1e5f3a-7c2d-4e8f-9a10-0f1ee7e0a001"
    first, second = envelopes.seal(project), envelopes.seal(project)
    assert first != second  # a fresh nonce each time
    for envelope in (first, second):
        assert project not in envelope
        assert envelopes.open(envelope) == project


def test_tampered_envelope_fails_authentication(envelopes: ProjectEnvelopes) -> None:
    envelope = envelopes.seal("project-a")
    body = bytearray(base64.urlsafe_b64decode(envelope[len(PREFIX) :] + "=="))
    body[14] ^= 0x01  # flip one bit of the ciphertext
    forged = PREFIX + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    with pytest.raises(EnvelopeError, match="failed authentication"):
        envelopes.open(forged)


def test_envelope_of_another_secret_fails(envelopes: ProjectEnvelopes) -> None:
    other = ProjectEnvelopes(b"another secret of enough length!")
    with pytest.raises(EnvelopeError, match="failed authentication"):
        envelopes.open(other.seal("project-a"))


@pytest.mark.parametrize("value", ["", "project-a", "emu1.", "emu1.%%%", "emu1.AAAA", "x" * 5000])
def test_malformed_envelopes_are_refused(envelopes: ProjectEnvelopes, value: str) -> None:
    with pytest.raises(EnvelopeError):
        envelopes.open(value)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        ProjectEnvelopes(b"short")
