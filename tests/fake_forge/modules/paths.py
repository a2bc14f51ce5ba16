"""Mirrors modules/paths.py models_path (a test sets it to a temporary folder)."""
models_path = None
