"""graph (later issues)."""
