"""The `refinery` console command: `refinery.cli` (typer, rich and the commands) is imported inside `main`, so a
Ctrl-C that lands while it loads exits 130 with one line, as one during a command does, not with a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from refinery.cli import main as run
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return run()
