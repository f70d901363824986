"""The admin API's endpoints, declared once: route, role, request models and the
OpenAPI document are made from the same declaration, so the document cannot drift
from what is served.

Request bodies and query strings are pydantic models; an invalid one is answered 400 with
the failing fields, and their JSON Schemas become the document's components.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from flask import Blueprint, request
from pydantic import BaseModel, ValidationError

from service.admin.auth import authorize
from service.admin.errors import ApiError

_RULE_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 400: "Invalid request", 401: "No valid token",
                403: "The token's role may not do this", 404: "Not found",
                409: "Conflict", 422: "Refused by a business rule", 502: "Provider error"}


@dataclass
class Operation:
    method: str
    rule: str
    endpoint: str
    summary: str
    description: str
    role: str | None
    tags: tuple[str, ...]
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, str]
    headers: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def openapi_path(self) -> str:
        return _RULE_PARAM.sub(lambda m: "{" + m.group(2) + "}", self.rule)


class AdminApi:
    """A blueprint whose routes are declared with `operation`."""

    def __init__(self, blueprint: Blueprint, *, title: str, version: str):
        self.blueprint = blueprint
        self.title = title
        self.version = version
        self.operations: list[Operation] = []

    def operation(self, method: str, rule: str, *, summary: str, role: str | None,
                  tags: tuple[str, ...], body: type[BaseModel] | None = None,
                  query: type[BaseModel] | None = None, responses: dict[int, str] | None = None,
                  headers: dict[str, tuple[bool, str]] | None = None):
        """Declare and register an endpoint. The view gets `body=` / `query=` models."""

        def register(view):
            @functools.wraps(view)
            def wrapped(**kwargs):
                if role is not None:
                    authorize(role)
                if body is not None:
                    kwargs["body"] = parse_body(body)
                if query is not None:
                    kwargs["query"] = _validated(query, request.args.to_dict(), "query")
                return view(**kwargs)

            self.blueprint.add_url_rule(rule, view.__name__, wrapped, methods=[method])
            self.operations.append(Operation(
                method=method.lower(), rule=self.blueprint.url_prefix + rule,
                endpoint=f"{self.blueprint.name}.{view.__name__}",
                summary=summary, description=(view.__doc__ or "").strip(), role=role,
                tags=tags, body=body, query=query, responses=responses or {200: "OK"},
                headers=headers or {}))
            return wrapped
        return register

    def document(self) -> dict:
        """The OpenAPI 3.1 document of every declared endpoint."""
        components: dict[str, dict] = {"Error": _ERROR_SCHEMA}
        paths: dict[str, dict] = {}
        for op in self.operations:
            paths.setdefault(op.openapi_path, {})[op.method] = _operation_doc(op, components)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version,
                     "description": "Token-authenticated admin API. Roles: viewer reads, "
                                    "operator acts, admin also manages users and tokens. "
                                    "Every error has the Error shape."},
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }


def parse_body(model: type[BaseModel]) -> BaseModel:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return _validated(model, data, "body")


def _validated(model: type[BaseModel], data: dict, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in err["loc"]) or where,
                    "message": err["msg"]} for err in exc.errors(include_url=False)]
        raise ApiError(400, "validation_failed", f"the {where} is not valid",
                       details=details) from None


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message", "details", "request_id"],
    "properties": {
        "error": {"type": "string", "description": "A stable code: unauthorized, forbidden, "
                  "validation_failed, not_found, ..."},
        "message": {"type": "string"},
        "details": {"description": "Field errors or facts, or null"},
        "request_id": {"type": ["string", "null"]},
    },
}


def _schema_ref(model: type[BaseModel], components: dict) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_doc(op: Operation, components: dict) -> dict:
    doc: dict = {"summary": op.summary, "operationId": op.endpoint.replace(".", "_"),
                 "tags": list(op.tags)}
    if op.description:
        doc["description"] = op.description
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer" if kind == "int" else "string"}}
                  for kind, name in _RULE_PARAM.findall(op.rule)]
    for name, (required, text) in op.headers.items():
        parameters.append({"name": name, "in": "header", "required": required,
                           "description": text, "schema": {"type": "string", "maxLength": 255}})
    if op.query is not None:
        for name, prop in op.query.model_json_schema().get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": False,
                               "description": prop.get("description", ""),
                               "schema": {k: v for k, v in prop.items()
                                          if k not in ("title", "description")}})
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _schema_ref(op.body, components)}}}
    statuses = dict(op.responses)
    if op.role is not None:
        doc["security"] = [{"bearer": []}]
        statuses.setdefault(401, _STATUS_TEXT[401])
        statuses.setdefault(403, _STATUS_TEXT[403])
    if op.body is not None or op.query is not None:
        statuses.setdefault(400, _STATUS_TEXT[400])
    doc["responses"] = {}
    for status, text in sorted(statuses.items()):
        schema = {"$ref": "#/components/schemas/Error"} if status >= 400 else {"type": "object"}
        doc["responses"][str(status)] = {"description": text or _STATUS_TEXT.get(status, ""),
                                         "content": {"application/json": {"schema": schema}}}
    return doc
