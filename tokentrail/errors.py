"""One root for every error tokentrail raises on purpose.

Library exceptions (duckdb, kafka-python, OS errors) are translated into these once, at the
boundary where they happen, so the command line can print one clear line instead of a traceback.
"""


class TokentrailError(Exception):
    """Root of tokentrail's own errors; its message is one line meant for an operator."""


class ConfigError(TokentrailError):
    """Settings, catalog or rule files that cannot be used as given."""


class StoreError(TokentrailError):
    """The DuckDB file cannot be opened, migrated or written."""


class SourceError(TokentrailError):
    """An input (file, stdin, Kafka) cannot be read at all; bad records are dead-lettered."""


class BrokerError(TokentrailError):
    """The embedded Kafka-protocol broker cannot be started or reached."""
