"""The seed's import path ``odibi_core.cache`` (see :mod:`odibi_ray.compat`)."""

from .compat.cache_manager import CloudCacheManager

__all__ = ["CloudCacheManager"]
