"""Lesion-patch pretraining of the student (an optional start for stage 2)."""
