"""Mirrors the presence of modules/stealth_infotext.py (its effect is in the fake images.save_image)."""
