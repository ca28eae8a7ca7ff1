"""Fixtures for the azurite storage adapter (to be written)."""
