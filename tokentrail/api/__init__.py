"""The query API (DESIGN.md §7): FastAPI app factory, one router per resource, bearer keys.

>>> from tokentrail.api import create_app  # doctest: +SKIP
>>> app = create_app(store, api_settings())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokentrail.api.settings import ApiSettings, api_settings

if TYPE_CHECKING:
    from tokentrail.api.app import create_app

__all__ = ["ApiSettings", "api_settings", "create_app"]


def __getattr__(name: str) -> Any:
    # FastAPI loads when an app is built, not with every `tokentrail` command (keys, ingest ...).
    if name == "create_app":
        from tokentrail.api.app import create_app

        return create_app
    raise AttributeError(name)
