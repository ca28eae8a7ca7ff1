"""The seed's import path ``odibi_core.cloud`` (see :mod:`odibi_ray.compat`)."""

from .compat.cloud import CloudAdapter

__all__ = ["CloudAdapter"]
