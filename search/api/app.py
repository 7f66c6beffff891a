"""The API object: who may ask (tried in order), the one mapping of errors to HTTP, and an
OpenAPI document that says what one may search with now. Its endpoints are in
``search.api.endpoints``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import URLPattern, URLResolver
from ninja import NinjaAPI
from ninja.openapi.schema import OpenAPISchema
from ninja.operation import Operation

from gallery.api_auth import Anonymous, SignedInSession, TokenBearer, TokenHeader
from search.api.errors import exception_handlers_add, json_errors
from search.model_choice import search_model_choices

# Tokens first, then a signed-in browser session, then anonymous: credentials only widen what
# one sees, and credentials that are present but wrong are a 401, never a silent fall-back to
# anonymous results.
AUTH: list[Callable[..., Any]] = [TokenBearer(), TokenHeader(), SignedInSession(), Anonymous()]


class SearchAPI(NinjaAPI):
    """NinjaAPI whose responses outside an endpoint (unknown method, oversized body) are JSON
    errors too, and whose schema says that the endpoints take anonymous clients."""

    def _get_urls(self) -> list[URLPattern | URLResolver]:
        urls = super()._get_urls()
        for pattern in urls:
            if isinstance(pattern, URLPattern):
                pattern.callback = json_errors(pattern.callback)
        return urls

    def get_openapi_operation_id(self, operation: Operation) -> str:
        # Spelled as when the endpoints lived in search/api.py ("search_api_search_text"):
        # clients generated from the schema keep their method names.
        return f"search_api_{operation.view_func.__name__}"

    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        # Built per request: the models one may search with change as staff enable them, and
        # fused choices ("A+B") come and go as backfills finish.
        models = search_model_choices()
        for operations in schema["paths"].values():
            for operation in operations.values():
                if operation.get("security"):
                    # An empty requirement: no credentials at all is accepted as well.
                    operation["security"].append({})
                for parameter in operation.get("parameters", []):
                    if models and parameter["name"] == "model" and parameter["in"] == "query":
                        parameter["schema"] = {"type": "string", "enum": models}
        return schema


api = SearchAPI(
    title="Image search API",
    version="1",
    description=(
        "Search images with natural-language text, with an image, or for images similar to one "
        "you can see. Every endpoint also answers anonymous clients, who see public images "
        "only; with a personal API token (`Authorization: Bearer <token>` or `X-API-Token`) "
        "or a signed-in session you also see your private uploads. Credentials that are "
        'present but wrong are a 401. Errors are JSON: {"error": message}.'
    ),
    urls_namespace="api",
    auth=AUTH,
)
exception_handlers_add(api)
