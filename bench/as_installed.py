"""Run `tokentrail` as installed in production, from the dev venv: pandas cannot be imported.

pandas is only a dev dependency (the benchmarks' baselines), yet where it is installed pyarrow
imports it on its first conversion of a Python list (+40 MB of RSS). The RSS benchmark measures
the process as users run it, and tests/cli/test_as_installed.py checks that no command needs it.

    .venv/bin/python bench/as_installed.py ingest events.jsonl --db audit.duckdb
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec


class NoPandas:
    """A meta-path finder that refuses `pandas`, as a missing package would be refused."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NoPandas())
    from tokentrail.cli import main

    sys.argv[0] = "tokentrail"
    main()
