"""Fixtures for the local storage adapter (to be written)."""
