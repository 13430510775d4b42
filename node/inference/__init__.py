"""Inference with ONNX Runtime only (never torch): sessions, the VersaMammo and MammoRG runners,
and the snapshot of active model versions a study is processed with.
"""
