# modules_forge/forge_version.py:1 — Forge Neo names itself "neo" here (Forge main writes a version tag)
version = "neo"
