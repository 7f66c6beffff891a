"""The JSON API: ``api`` (``search.api.app``), imported through its endpoints so that every
route is registered on it (``search.api.endpoints``); schemas, errors and rendering apart."""

from search.api.endpoints import api

__all__ = ["api"]
