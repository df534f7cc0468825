"""``python -m flip_nvflare.executors.script``: runs a script as __main__, leaves a failure's traceback for the site."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flip_nvflare.executors.script import FAILURE_FILE


def _run(app: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    custom = app / "custom"
    custom.mkdir(parents=True, exist_ok=True)
    (custom / "helper_mod.py").write_text("VALUE = 7\n")
    (custom / "trainer.py").write_text(body)
    command = [sys.executable, "-m", "flip_nvflare.executors.script", "custom/trainer.py", *args]
    return subprocess.run(command, cwd=app, capture_output=True, text=True, timeout=60)


def test_the_script_runs_as_main_with_its_arguments_and_its_folder_importable(tmp_path: Path) -> None:
    body = "import sys, helper_mod\nif __name__ == '__main__':\n    print(sys.argv[1:], helper_mod.VALUE)\n"
    result = _run(tmp_path, body, "--project_id", "abc")
    assert result.returncode == 0, result.stderr
    assert "['--project_id', 'abc'] 7" in result.stdout
    assert not (tmp_path / FAILURE_FILE).exists()


def test_a_raising_script_leaves_its_traceback_and_exits_non_zero(tmp_path: Path) -> None:
    result = _run(tmp_path, "def f():\n    raise ValueError('study ACC000123 unreadable')\nf()\n")
    assert result.returncode != 0
    text = (tmp_path / FAILURE_FILE).read_text()
    assert "ValueError: study ACC000123 unreadable" in text and "line 2, in f" in text


def test_sys_exit_zero_is_success_and_non_zero_is_a_failure(tmp_path: Path) -> None:
    assert _run(tmp_path / "ok", "import sys\nsys.exit(0)\n").returncode == 0
    assert not (tmp_path / "ok" / FAILURE_FILE).exists()
    assert _run(tmp_path / "bad", "import sys\nsys.exit(3)\n").returncode == 3
    assert "exited with status 3" in (tmp_path / "bad" / FAILURE_FILE).read_text()


def test_a_symlink_planted_at_the_failure_file_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched")
    (tmp_path / "app").mkdir()
    os.symlink(target, tmp_path / "app" / FAILURE_FILE)
    _run(tmp_path / "app", "raise RuntimeError('x')\n")
    assert target.read_text() == "untouched"
    assert not (tmp_path / "app" / FAILURE_FILE).is_symlink()


def test_a_missing_script_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flip_nvflare.executors.script", "custom/nope.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no script 'custom/nope.py'" in result.stderr
