"""api (later issues)."""
