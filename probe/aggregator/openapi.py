"""The aggregator's HTTP API described: the response shapes the views do not define, and the OpenAPI 3.1 document
built from every response model's JSON schema (served at /api/v1/openapi.json).

The document is generated, never written by hand, so it cannot drift from what the handlers send: each response
body is a pydantic model dumped with `model_dump_json`, and its schema here is that model's serialization schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from probe.aggregator.views import AgentView, FleetView, ServerDetail
from probe.inventory.model import _NAME as _RELAY_NAME  # the inventory's own rule for relay names
from probe.verify.api import (
    REQUEST_ID,
    InventoryView,
    VerificationRequest,
    VerificationStarted,
    VerificationView,
)

API_VERSION = "1"
RELAY_NAME_PATTERN = f"^{_RELAY_NAME.pattern}$"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format 0.0.4
MAX_AFTER = 1_000_000_000


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentList(_Shape):
    """`/api/v1/agents`: every agent the aggregator has heard from, by name."""

    generated_at: datetime
    agents: tuple[AgentView, ...]


class Healthz(_Shape):
    """`/healthz`: 200 while the aggregator serves and its data is fresh enough to judge relays, else 503."""

    status: Literal["ok", "starting", "stale", "unavailable"]
    detail: str
    newest_data_age_seconds: float | None  # the newest result or status from any agent; None: none yet
    agents_heard: int  # agents heard from within the staleness limit
    stale_after_seconds: float


class ApiError(_Shape):
    """Every error the API answers: a word for programs and a sentence for people. No stack trace, ever."""

    error: Literal[
        "bad_request",
        "not_found",
        "method_not_allowed",
        "unsupported_media_type",
        "request_timeout",
        "too_many_requests",
        "unavailable",
        "internal_error",
    ]
    detail: str
    suggestions: tuple[str, ...] = ()  # for an unknown relay: inventory names close to the one asked for


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    FleetView,
    ServerDetail,
    AgentList,
    Healthz,
    ApiError,
    InventoryView,
    VerificationStarted,
    VerificationView,
)
REQUEST_MODELS: tuple[type[BaseModel], ...] = (VerificationRequest,)


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "Invalid input (a query parameter, a malformed name).",
        404: "No such resource.",
        408: "The request body did not arrive in time.",
        415: "The body is not application/json.",
        429: "Too many verifications in the last minute: try again after Retry-After seconds.",
        503: "No agent can be asked (none online with a good control check, or no broker connection).",
    }
    return {str(code): _json(ApiError, words[code]) for code in codes}


def _get(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": responses, **extra}}


def openapi_document() -> dict[str, Any]:
    """The API as an OpenAPI 3.1 document (JSON Schema 2020-12 dialect, which pydantic writes)."""
    _, top = models_json_schema(
        [(model, "serialization") for model in RESPONSE_MODELS] + [(model, "validation") for model in REQUEST_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    name_parameter = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The relay's inventory name, e.g. se-got-wg-001.",
        "schema": {"type": "string", "pattern": RELAY_NAME_PATTERN, "maxLength": 253},
    }
    text = {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    page = {"description": "The status page", "content": {"text/html": {"schema": {"type": "string"}}}}
    paths = {
        "/api/v1/servers": _get(
            "Every relay by country and city, the failing ones first with the labels they share, and the agents.",
            {"200": _json(FleetView, "The fleet."), **_errors(400)},
        ),
        "/api/v1/servers/{name}": _get(
            "One relay: health, every agent's newest result per path and stage, last failure, health changes.",
            {"200": _json(ServerDetail, "The relay."), **_errors(400, 404)},
            parameters=[name_parameter],
        ),
        "/api/v1/agents": _get("The agents and their state.", {"200": _json(AgentList, "The agents."), **_errors(400)}),
        "/api/v1/inventory": _get(
            "The relays the aggregator knows (names, entry addresses, locations, labels): what verifications name.",
            {"200": _json(InventoryView, "The inventory."), **_errors(400)},
        ),
        **_verification_paths(),
        "/api/v1/openapi.json": _get(
            "This document.",
            {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
        ),
        "/healthz": _get(
            "Whether the aggregator serves and has fresh data.",
            {
                "200": _json(Healthz, "Serving, with fresh data (or starting)."),
                "503": _json(Healthz, "Serving, but no fresh data: it cannot judge relays."),
                **_errors(400),
            },
        ),
        "/metrics": _get("Prometheus metrics, computed at scrape time.", {"200": text}),
        "/": _get("The status page.", {"200": page}),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wgprobe aggregator",
            "version": API_VERSION,
            "description": "One verdict per WireGuard relay from many vantage points. Field names are a contract: "
            "fields may be added, never renamed. Text that came from agents or inventories (names, labels, details) "
            "is data: render it as text, never as markup. Like /metrics, this API is meant for loopback or a "
            "trusted network and has no authentication of its own; POST /api/v1/verifications is its one "
            "state-changing endpoint (it makes every online agent probe the servers named, now).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _verification_paths() -> dict[str, Any]:
    started = _json(VerificationStarted, "Sent: the agents asked, and where to follow the answers.")
    started["headers"] = {
        "Location": {"description": "The verification's URL path.", "schema": {"type": "string"}, "required": True}
    }
    request_id = {
        "name": "request_id",
        "in": "path",
        "required": True,
        "description": "The request id POST answered with.",
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
    }
    after = {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "Results already read: the answer holds those after the first `after`.",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AFTER, "default": 0},
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VerificationRequest"}}},
    }
    return {
        "/api/v1/verifications": {
            "post": {
                "summary": "Ask every agent that is online with a good control check to probe these relays now, on "
                "every path; they answer with ordinary results tagged with the request id. The one state-changing "
                "endpoint: inventory names only, at most 1,000 a request, a bounded number of requests a minute.",
                "requestBody": body,
                "responses": {"202": started, **_errors(400, 404, 408, 415, 429, 503)},
            }
        },
        "/api/v1/verifications/{request_id}": _get(
            "The answers so far: every result tagged with the request id, and which agents answered.",
            {"200": _json(VerificationView, "The verification."), **_errors(400, 404)},
            parameters=[request_id, after],
        ),
    }
