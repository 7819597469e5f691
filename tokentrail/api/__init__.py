"""The query API (DESIGN.md §7): FastAPI app factory, one router per resource, bearer keys.

>>> from tokentrail.api import create_app  # doctest: +SKIP
>>> app = create_app(store, api_settings())  # doctest: +SKIP
"""

from tokentrail.api.app import create_app
from tokentrail.api.settings import ApiSettings, api_settings

__all__ = ["ApiSettings", "api_settings", "create_app"]
