"""Mirrors modules/paths.py:3 models_path (from modules/paths_internal.py:27; a test sets it to a temporary
folder)."""
models_path = None
