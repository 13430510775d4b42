"""MammoRG training: knowledge stage, alignment, terminology-aware SFT, evaluation (docs/mammorg.md)."""
