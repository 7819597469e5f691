"""What the graph modules share: UTC times from the store and the JSON form of their results."""

from __future__ import annotations

import msgspec

from tokentrail.store.graph import utc

__all__ = ["Result", "utc"]


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """Base of graph results: frozen (tests compare whole values) and JSON-encodable."""

    def to_json(self, *, indent: int = 2) -> str:
        """The result as JSON text (times in RFC 3339, UTC)."""
        return msgspec.json.format(msgspec.json.encode(self), indent=indent).decode()

    def to_builtins(self) -> dict[str, object]:
        """The result as plain dicts, lists and strings (as its JSON decodes)."""
        value = msgspec.to_builtins(self)
        assert isinstance(value, dict)
        return value
