"""sinks (later issues)."""
