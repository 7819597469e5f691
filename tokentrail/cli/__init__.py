"""Command-line entry point: errors become one line on stderr, never a traceback."""

from __future__ import annotations

import os
import sys
import traceback

from tokentrail.cli import (  # noqa: F401 (registers the commands)
    api,
    contain,
    deliver,
    demo,
    detect,
    graph,
    info,
    ingest,
    ops,
    simulate,
)
from tokentrail.cli.app import app
from tokentrail.errors import TokentrailError

# Exit codes: 2 for a problem the operator can fix (input, settings, broker), 70 for a bug.
EXIT_USAGE = 2
EXIT_INTERNAL = 70


def main() -> None:
    """Run the `tokentrail` command."""
    # Exit outside the handler, once the exception and the frames it holds are released:
    # DuckDB's bindings report objects still alive at interpreter exit as leaks.
    sys.exit(_run())


def _run() -> int:
    try:
        app()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except TokentrailError as exc:
        print(f"tokentrail: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("TOKENTRAIL_DEBUG"):
            traceback.print_exc()
        print(
            f"tokentrail: internal error: {type(exc).__name__}: {exc}"
            " (set TOKENTRAIL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return 0
