"""Runnable examples of odibi_ray (importable so Ray workers can load their node functions)."""
