"""VersaMammo training: stage 1 (ssl) and stage 2 (distill)."""
