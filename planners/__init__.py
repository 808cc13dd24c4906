"""Diffuser-style trajectory planners (inpainting, value guidance)."""
