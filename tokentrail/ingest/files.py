"""Reading events from files and stdin: JSON lines or a JSON array, optionally gzipped.

The layout is detected from the content, not the name: gzip by its magic bytes, an array by its
leading `[`. JSON lines stream in constant memory; an array is read whole (use JSON lines for
files larger than memory). A file whose first line is not a whole JSON value is one document
spread over lines (a pretty-printed CloudTrail or OTLP file): it is read whole as one record.
"""

from __future__ import annotations

import gzip
import io
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from tokentrail.errors import SourceError
from tokentrail.ingest.adapters import DECODE_ERRORS

_GZIP_MAGIC = b"\x1f\x8b"


class RecordFile:
    """One input file (or stdin as `-`) yielding `(position, raw record)` pairs.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "e.jsonl"
    >>> _ = path.write_bytes(b'{"a": 1}\\n\\n{"b": 2}\\n')
    >>> list(RecordFile(str(path)).records())
    [(1, b'{"a": 1}'), (3, b'{"b": 2}')]
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = "stdin" if name == "-" else "file"
        self._raw: BinaryIO
        if self.kind == "stdin":
            self._raw = sys.stdin.buffer
            self.size: int | None = None
        else:
            try:
                self._raw = Path(name).open("rb")  # noqa: SIM115 (closed in records())
                self.size = Path(name).stat().st_size
            except OSError as exc:
                raise SourceError(f"cannot read {name}: {exc.strerror}") from None

    def consumed(self) -> int:
        """Bytes of the (possibly compressed) input read so far, for progress."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def records(
        self, *, whole_array: Callable[[bytes], bool] | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """Yield each record with its 1-based line number (JSON lines) or item number (array).

        `whole_array`, given the first item of a JSON array, says whether the array itself is
        the record (a Zipkin trace is one record, not a list of them): it is then yielded whole.
        """
        try:
            stream = self._open()
            head = stream.peek(64)[:64].lstrip()
            if head.startswith(b"["):
                yield from self._array(stream, whole_array)
            else:
                yield from self._lines(stream)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceError(f"cannot read {self.name}: {exc}") from None
        finally:
            if self.kind == "file":
                self._raw.close()

    def _open(self) -> io.BufferedReader[Any]:
        raw = io.BufferedReader(self._raw, buffer_size=1 << 20)  # type: ignore[type-var]
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20)
        return raw

    def _lines(self, stream: io.BufferedReader[Any]) -> Iterator[tuple[int, bytes]]:
        lines: Iterator[tuple[int, bytes]] = (
            (number, line) for number, line in enumerate(stream, start=1) if line.strip()
        )
        head = next(lines, None)
        if head is None:
            return
        start, first = head
        if _is_json(first):
            lines = itertools.chain([head], lines)
        else:
            # A document over several lines is read whole; if it is not one either, each line
            # is its own record again, dead-lettered with its own reason.
            data = first + stream.read()
            if _is_json(data):
                yield start, data.strip()
                return
            lines = enumerate(io.BytesIO(data), start=start)
        for number, line in lines:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line

    def _array(
        self, stream: io.BufferedReader[Any], whole_array: Callable[[bytes], bool] | None
    ) -> Iterator[tuple[int, bytes]]:
        data = stream.read()
        try:
            items = msgspec.json.decode(data, type=list[msgspec.Raw])
        except DECODE_ERRORS:
            if _is_json(data.lstrip().split(b"\n", 1)[0]):
                # JSON lines of arrays (a span list per line, as Zipkin reporters send them).
                yield from self._lines(io.BufferedReader(io.BytesIO(data)))
                return
            # The array cannot be split into items: the whole file is one bad record (position
            # 0), which validation then dead-letters with the parser's reason.
            yield 0, data
            return
        if whole_array is not None and items and whole_array(bytes(items[0])):
            yield 1, data
            return
        for number, item in enumerate(items, start=1):
            yield number, bytes(item)


def _is_json(data: bytes) -> bool:
    """Whether `data` is exactly one JSON value (checked without building it)."""
    try:
        msgspec.json.decode(data, type=msgspec.Raw)
    except DECODE_ERRORS:
        return False
    return True
