"""The folder an imaging-api download answer names must be inside ``IMAGES_DIR/NET_ID``, over real sockets.

A tiny HTTP server on 127.0.0.1 answers the download route with crafted JSON (the emulator always
answers the right folder); the emulator covers the cases where the backend's own settings make a
correct-looking answer wrong (``IMAGES_DIR`` unset, or set elsewhere).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import FlipInvalidResponse
from flip_nvflare.retry import RetryPolicy

NET_ID = "net-1"
ACCESSION = "ACC-7731"
PROJECT = "encrypted-project"
COHORT_SQL = "SELECT io.person_id, io.accession_id FROM omop.image_occurrence io ORDER BY io.image_occurrence_id"


class _ImagingAnswers:
    """An imaging-api stand-in: every POST gets ``{"path": <path>}``; the routes asked are recorded."""

    def __init__(self) -> None:
        self.path: str = ""
        self.routes: list[str] = []
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answers.routes.append(self.path)
                body = json.dumps({"path": answers.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def imaging() -> Iterator[_ImagingAnswers]:
    server = _ImagingAnswers()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """``IMAGES_DIR`` with this trust's net, another net and a folder outside, each holding an accession."""
    images = tmp_path / "images"
    for folder in (images / NET_ID / ACCESSION, images / "net-2" / ACCESSION, tmp_path / "elsewhere" / ACCESSION):
        folder.mkdir(parents=True)
        (folder / "scan.nii.gz").write_bytes(b"voxels")
    return images


def _backend(url: str, images_dir: Path | None) -> FLIPStandardProd:
    return FLIPStandardProd(
        imaging_api_url=url,
        trust_key="trust-key-for-tests",
        net_id=NET_ID,
        images_dir=images_dir,
        retry=RetryPolicy(max_attempts=1),
        env={},
    )


def _refused(backend: FLIPStandardProd, *shown: str) -> FlipInvalidResponse:
    with pytest.raises(FlipInvalidResponse) as err:
        backend.get_by_accession_number(PROJECT, ACCESSION)
    backend.close()
    message = str(err.value)
    for text in shown:
        assert text not in message
    return err.value


def test_a_folder_inside_the_net_is_accepted(imaging: _ImagingAnswers, volume: Path) -> None:
    imaging.path = str(volume / NET_ID / ACCESSION)
    backend = _backend(imaging.url, volume)
    assert backend.get_by_accession_number(PROJECT, ACCESSION) == volume / NET_ID / ACCESSION
    backend.close()
    assert imaging.routes and imaging.routes[0].startswith(f"/download/images/{NET_ID}?")


ANSWERS: dict[str, Callable[[Path], str]] = {
    "images_dir_itself": lambda images: str(images),
    "images_dir_with_slash": lambda images: f"{images}/",
    "the_net_folder_itself": lambda images: str(images / NET_ID),
    "another_net": lambda images: str(images / "net-2" / ACCESSION),
    "dotdot_to_another_net": lambda images: f"{images}/{NET_ID}/../net-2/{ACCESSION}",
    "dotdot_out_of_the_volume": lambda images: f"{images}/{NET_ID}/../../elsewhere/{ACCESSION}",
    "dotdot_back_inside": lambda images: f"{images}/{NET_ID}/{ACCESSION}/../{ACCESSION}",
    "outside_the_volume": lambda images: str(images.parent / "elsewhere" / ACCESSION),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_an_answer_outside_this_nets_folder_is_refused_without_naming_it(
    imaging: _ImagingAnswers, volume: Path, answer: str
) -> None:
    imaging.path = ANSWERS[answer](volume)
    err = _refused(_backend(imaging.url, volume), str(volume), imaging.path, ACCESSION, "net-2", "elsewhere")
    assert "IMAGES_DIR" in str(err)


@pytest.mark.parametrize("link_to", ["another_net", "outside", "net_folder"])
def test_a_symlink_inside_the_net_that_resolves_outside_it_is_refused(
    imaging: _ImagingAnswers, volume: Path, link_to: str
) -> None:
    target = {
        "another_net": volume / "net-2" / ACCESSION,
        "outside": volume.parent / "elsewhere" / ACCESSION,
        "net_folder": volume / NET_ID,
    }[link_to]
    link = volume / NET_ID / "LINKED-ACC"
    link.symlink_to(target, target_is_directory=True)
    imaging.path = str(link)
    _refused(_backend(imaging.url, volume), str(volume), str(target), "LINKED-ACC")


@pytest.mark.parametrize("answer", ["inside_the_net", "anywhere", "root"])
def test_any_answer_is_refused_when_images_dir_is_unset(imaging: _ImagingAnswers, volume: Path, answer: str) -> None:
    imaging.path = {"inside_the_net": str(volume / NET_ID / ACCESSION), "anywhere": str(volume), "root": "/"}[answer]
    err = _refused(_backend(imaging.url, None), str(volume), ACCESSION)
    assert "IMAGES_DIR" in str(err)


# ------------------------------------------------------------------ the emulator's real answers


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def _an_accession(emu: EmulatorHandle) -> str:
    backend = emu.prod_backend()
    try:
        return str(backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)["accession_id"].iloc[0])
    finally:
        backend.close()


def test_the_emulators_answer_is_refused_when_images_dir_is_unset(emu: EmulatorHandle) -> None:
    accession = _an_accession(emu)
    backend = emu.prod_backend(env={"IMAGES_DIR": ""})
    with pytest.raises(FlipInvalidResponse) as err:
        backend.get_by_accession_number(emu.encrypted_project_id, accession)
    backend.close()
    assert accession not in str(err.value) and str(emu.images_dir) not in str(err.value)


def test_the_emulators_answer_is_refused_when_it_is_not_under_this_backends_net(emu: EmulatorHandle) -> None:
    """The service puts the folder in ``<its volume>/<net>/<accession>``; a backend whose IMAGES_DIR is
    ``<its volume>/<net>`` expects ``<its volume>/<net>/<net>/...``: the answer is the wrong net's folder."""
    accession = _an_accession(emu)
    backend = emu.prod_backend(env={"IMAGES_DIR": str(emu.images_dir / emu.net_id)})
    with pytest.raises(FlipInvalidResponse) as err:
        backend.get_by_accession_number(emu.encrypted_project_id, accession)
    backend.close()
    assert accession not in str(err.value) and str(emu.images_dir) not in str(err.value)
    good = emu.prod_backend()
    assert good.get_by_accession_number(emu.encrypted_project_id, accession) == emu.images_dir / emu.net_id / accession
    good.close()
