"""``python -m flip_emulator``: the same as ``flip-nvflare emulate``."""

from __future__ import annotations

import sys

from flip_emulator.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m flip_emulator"))
