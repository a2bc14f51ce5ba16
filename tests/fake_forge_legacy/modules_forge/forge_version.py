"""modules_forge/forge_version.py:1 of both hosts: not "neo", so the bridge selection goes past Forge Neo."""
import fake_host

version = '1.0.0v2-v1.10.1RC' if fake_host.is_reforge() else '0.0.17v1.8.0rc'  # 3b56b268 / bfee03d8
