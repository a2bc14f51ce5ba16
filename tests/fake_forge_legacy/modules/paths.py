"""modules/paths.py:3 (both hosts) re-exports models_path from modules/paths_internal.py (:31 bfee03d8; :32
3b56b268, which honours --models-dir). A test sets it to a temporary folder."""
models_path = None
