"""What attribute redaction costs `EventDecoder.decode`: µs per event, an older events.py against
the current one, timed alternately in one process (medians of 7) so machine load hits both alike.

    git show HEAD~1:tokentrail/events.py > /tmp/events_before.py
    .venv/bin/python bench/fuzz/redaction_cost.py /tmp/events_before.py
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from ingest import events  # noqa: E402 (bench/ingest.py's ~570-byte events)


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    before = load(Path(sys.argv[1]), "events_before")
    after = load(HERE.parent.parent / "tokentrail" / "events.py", "events_after")
    same = list(events(50_000))
    varied = []
    for i, raw in enumerate(same):
        event = msgspec.json.decode(raw)
        event["attributes"] = {**event["attributes"], "request.id": f"req-{i:08x}-{i * 7919}"}
        varied.append(msgspec.json.encode(event))
    for label, raws in (("constant attributes", same), ("varied attributes", varied)):
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(7):
            for name, module in (("before", before), ("after", after)):
                decoder = module.EventDecoder(salt=b"s")
                started = time.perf_counter()
                for raw in raws:
                    decoder.decode(raw)
                runs[name].append((time.perf_counter() - started) / len(raws) * 1e6)
        old, new = statistics.median(runs["before"]), statistics.median(runs["after"])
        print(f"{label}: before {old:.2f} µs/event, after {new:.2f} (+{new - old:.2f} µs)")


if __name__ == "__main__":
    main()
