"""detect (later issues)."""
