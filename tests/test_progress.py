"""ProgressLog: a bar on a terminal, a percent line every few seconds in logs, counts only; and where it is used."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from flip_nvflare.executors.downloads import ImageFetcher, Progress
from flip_nvflare.progress import ProgressLog, format_bytes


class Clock:
    """Time that moves only when the test sets it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_percent_line_is_logged_every_interval() -> None:
    clock, lines = Clock(), list[str]()
    progress = ProgressLog("Images", unit="images", log=lines.append, interval=5, clock=clock, terminal=False)
    progress.update(0, 100)  # starts the clock: no line yet
    clock.now = 104.9
    progress.update(40, 100, note="40 ready, 0 missing")
    assert lines == []
    clock.now = 105.0
    progress.update(50, 100, note="48 ready, 2 missing")
    assert lines == ["Images: 50% (50/100 images; 48 ready, 2 missing), 10.0/s, ETA 5 s"]
    clock.now = 109.0
    progress.update(60, 100)
    assert len(lines) == 1  # the next is due at 110
    clock.now = 110.0
    progress(70, 100)  # the callback signature: (done, total)
    assert lines[-1] == "Images: 70% (70/100 images), 7.0/s, ETA 4 s"
    clock.now = 112.0
    progress.finish("99 ready, 1 missing")
    progress.update(100, 100)  # after the end: ignored
    assert lines[-1] == "Images: 70% (70/100 images; 99 ready, 1 missing), 5.8/s, ETA 5 s"
    assert len(lines) == 3 and list(progress.lines) == lines


def test_on_a_terminal_a_bar_is_redrawn_on_one_line_and_ended() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = ProgressLog("Results upload", unit="bytes", stream=stream, clock=clock, terminal=True, redraw=0.5)
    progress(0, 4 * 1024 * 1024)
    clock.now = 100.2
    progress(512 * 1024, 4 * 1024 * 1024)
    assert stream.getvalue() == ""  # not yet due
    clock.now = 101.0
    progress(1024 * 1024, 4 * 1024 * 1024)
    bar = "Results upload [#######---------------------]  25% 1.0 MiB/4.0 MiB, 1.0 MiB/s, ETA 3 s"
    assert stream.getvalue() == "\r" + bar + "\x1b[K"
    clock.now = 103.0
    progress(4 * 1024 * 1024, 4 * 1024 * 1024)
    progress.finish()
    final = "Results upload [############################] 100% 4.0 MiB/4.0 MiB, 1.3 MiB/s, 3 s"
    assert stream.getvalue().endswith("\r" + final + "\x1b[K\n")
    assert stream.getvalue().count("\n") == 1


def test_the_mode_follows_whether_the_stream_is_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ProgressLog("x", stream=Tty()).terminal
    assert not ProgressLog("x", stream=io.StringIO()).terminal
    without_log = io.StringIO()
    progress = ProgressLog("Step", stream=without_log, clock=Clock(), terminal=False)
    progress.finish()
    assert without_log.getvalue() == "Step: (0)\n"  # no total known: no percentage


@pytest.mark.parametrize("interval", [0, -1, True, "5"])
def test_a_bad_interval_is_refused(interval: object) -> None:
    with pytest.raises(ValueError, match="interval"):
        ProgressLog("x", interval=interval)  # type: ignore[arg-type]


def test_bytes_are_shown_for_people() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536 * 1024, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 MiB",
        "3.0 GiB",
    ]


def test_a_broken_stream_never_stops_the_step() -> None:
    stream = io.StringIO()
    stream.close()
    progress = ProgressLog("x", stream=stream, terminal=True, clock=Clock())
    progress(1, 2)
    progress.finish()
    assert list(progress.lines)[-1].startswith("x [")


def test_the_image_fetcher_ticks_with_counts_as_fetches_finish(tmp_path: Path) -> None:
    ticks: list[Progress] = []

    def fetch(accession: str) -> Path:
        if accession == "ACC3":
            raise FileNotFoundError
        return tmp_path / accession

    ImageFetcher(fetch, concurrency=1, tick=ticks.append).run([f"ACC{i}" for i in range(5)])
    assert [t.done for t in ticks] == sorted(t.done for t in ticks) and ticks[-1].done == 5
    assert (ticks[-1].ready, ticks[-1].missing, ticks[-1].total) == (4, 1, 5)

    def failing_tick(_: Progress) -> None:
        raise RuntimeError("display broke")

    report = ImageFetcher(fetch, tick=failing_tick).run(["ACC1", "ACC2"])  # the downloads go on
    assert report.ready == 2


def test_cohort_preparation_logs_percent_lines_without_ids_or_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.executors.test_cohort_unit import ROWS, dev_trust, preparer, run

    engine = dev_trust(tmp_path, cast("list[dict[str, Any]]", ROWS), with_images=["ACC001", "ACC002"])
    with caplog.at_level(logging.INFO):
        run(engine, preparer(max_missing_fraction=0.5))
    lines = [r.getMessage() for r in caplog.records if "Images:" in r.getMessage()]
    assert lines
    assert "Images: 100% (3/3 images; 2 ready, 1 missing)" in lines[-1]
    assert not any("ACC00" in line or str(tmp_path) in line for line in lines)


def test_a_failing_log_never_stops_the_step() -> None:
    def broken(_: str) -> None:
        raise RuntimeError("log handler broke")

    progress = ProgressLog("x", log=broken, terminal=False, clock=Clock())
    progress(1, 2)
    progress.finish()
    assert list(progress.lines) == ["x: 50% (1/2)"]
