"""OpenAPI documentation for routes that read raw bodies (the bid routes parse bytes
themselves for speed): the request and response schemas are added to the document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from decisioning.openrtb import BidRequest
from decisioning.openrtb_response import BidResponse

_REF = "#/components/schemas/{model}"
_ERROR = {"application/json": {"schema": {"type": "object", "properties": {
    "error": {"type": "string"}, "detail": {}}, "required": ["error"]}}}

BID_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a bid", "content": {"application/json": {
        "schema": {"$ref": _REF.format(model="BidResponse")}}}},
    204: {"description": "no bid (every imp; the reason is in the decision log)"},
    400: {"description": "not a valid bid request; `detail` lists (path, message)",
          "content": _ERROR},
    401: {"description": "missing or unknown API key", "content": _ERROR},
    413: {"description": "body larger than the limit", "content": _ERROR},
}

NOTICE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "`recorded`, or `duplicate` (a repeat counts once)"},
    400: {"description": "a parameter is missing, unsubstituted or not a number",
          "content": _ERROR},
    503: {"description": "dedupe store or budget ledger unreachable; retry",
          "content": _ERROR},
}


def bid_request_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model="BidRequest")}}}}}


def openapi_with(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` replacement adding the OpenRTB schemas to the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            _, top = models_json_schema([(BidRequest, "validation"),
                                         (BidResponse, "serialization")],
                                        ref_template=_REF)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(
                top.get("$defs", {}))
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


__all__ = ["BID_RESPONSES", "NOTICE_RESPONSES", "bid_request_body", "openapi_with"]
