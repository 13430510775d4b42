"""Stage 2: supervised training of the EfficientNet student with knowledge distillation."""
