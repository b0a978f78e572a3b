"""The worker loop (placeholder)."""

import gc


def tune_gc() -> None:
    """Tune the garbage collector for batch processing."""
    # A batch allocates tens of thousands of short-lived, acyclic objects; the
    # default gen0 threshold (700) would scan them again and again.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
