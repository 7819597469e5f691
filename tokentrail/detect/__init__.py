"""Detection (DESIGN.md §5): detectors on event time over annotated calls, deduplicated alerts.

Kept free of imports: the store imports `tokentrail.detect.model` for its row types.
"""
