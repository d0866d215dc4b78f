"""OpenAPI 3.0 description of the worker API (served at GET /openapi.json)."""

from __future__ import annotations

from typing import Any

_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"}
_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_KIND = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}
_ADMIN_ERRORS = {"401": _ERROR, "403": _ERROR, "422": _ERROR, "503": _ERROR}
_ERRORS = {"400": _ERROR, "413": _ERROR, "415": _ERROR, "422": _ERROR, "503": _ERROR}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "clusterkit reference app (worker API)",
        "version": "0.1.0",
        "description": "Synchronous requests under a capacity model and durable background jobs.",
    },
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Readiness: Redis and MongoDB usable (the job stream is reported only)",
                "responses": {
                    "200": _json({"type": "object"}, "Ready"),
                    "503": _json({"type": "object"}, "Not ready, or draining"),
                },
            }
        },
        "/api/requests": {
            "post": {
                "summary": "Serve one request (holds a capacity slot for SERVICE_TIME_MS)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "payload": {"type": "object"},
                                    "session": _ID,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "worker_id", "session"],
                            "properties": {
                                "id": {"type": "string"},
                                "worker_id": {"type": "string"},
                                "session": {"type": "string"},
                            },
                        },
                        "Served; the document is stored in MongoDB",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/requests/{id}": {
            "get": {
                "summary": "The stored document of a served request",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json({"type": "object"}, "The document"),
                    "404": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/api/jobs": {
            "post": {
                "summary": "Submit a background job (202 once durable in Redis)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"payload": {"type": "object"}, "id": _ID},
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["id", "created"],
                            "properties": {
                                "id": {"type": "string"},
                                "created": {"type": "boolean"},
                            },
                        },
                        "Accepted (created=false: a job with this id already existed)",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/jobs/{id}": {
            "get": {
                "summary": "Status of a job",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "status": {
                                    "type": "string",
                                    "enum": ["queued", "dispatched", "applied"],
                                },
                                "attempts": {"type": "integer"},
                                "submitted_at": {"type": "string", "nullable": True},
                                "applied_by": {"type": "string", "nullable": True},
                                "applied_at": {"type": "string", "nullable": True},
                            },
                        },
                        "The job",
                    ),
                    "404": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/api/admin/broadcast": {
            "get": {
                "summary": "This worker's broadcast counts: received, sent, dropped",
                "security": [{"serverToken": []}],
                "responses": {"200": _json({"type": "object"}, "Counts"), **_ADMIN_ERRORS},
            },
            "post": {
                "summary": "Publish a signed message of a kind to every worker and the master",
                "security": [{"serverToken": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["kind"],
                                "properties": {"kind": _KIND, "payload": {"type": "object"}},
                            }
                        }
                    },
                },
                "responses": {"202": _json({"type": "object"}, "Published"), **_ADMIN_ERRORS},
            },
        },
        "/api/admin/rollcall": {
            "post": {
                "summary": "Ask every live process to answer; the ids that answered in time",
                "security": [{"serverToken": []}],
                "parameters": [
                    {
                        "name": "timeout",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0.05, "maximum": 10, "default": 1},
                    }
                ],
                "responses": {"200": _json({"type": "object"}, "Answers"), **_ADMIN_ERRORS},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "serverToken": {"type": "http", "scheme": "bearer", "description": "GRPC_TOKEN"}
        }
    },
}
