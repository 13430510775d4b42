"""Evaluation metrics shared by every training stage and by model packaging."""
