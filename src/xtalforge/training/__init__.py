"""Training loops (one readable loop per model family)."""
