"""Fixtures for the s3 storage adapter (to be written)."""
