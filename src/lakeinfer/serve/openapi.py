"""The OpenAPI 3 document of the server and a small docs page that reads it."""

from __future__ import annotations

from typing import Any

from .._version import __version__

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
              "FP16", "FP32", "FP64", "BYTES"]


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _get(summary: str, ok: str, *, name: list[dict[str, Any]] | None = None,
         codes: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "ok", **_json(ok)}}}
    for code in codes:
        op["responses"][code] = _ERROR
    if name:
        op["parameters"] = name
    return {"get": op}


def openapi_document(model_names: list[str]) -> dict[str, Any]:
    # the names that exist are the server's models' (others get 404)
    name_param = [{"name": "name", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": list(model_names)}}]
    errors = {code: _ERROR for code in ("400", "401", "404", "413", "503", "504")}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": _DATATYPES}, "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "lakeinfer serve", "version": __version__,
                 "description": "Open Inference Protocol (v2) REST API for the server's models, plus a records endpoint."},
        "paths": {
            "/v2": _get("Server metadata", "ServerMetadata", codes=("401",)),
            "/v2/health/live": _get("Liveness", "Live"),
            "/v2/health/ready": _get("Readiness: every worker has loaded every model", "Ready", codes=("503",)),
            "/v2/models/{name}": _get("Model metadata", "ModelMetadata", name=name_param, codes=("401", "404", "503")),
            "/v2/models/{name}/ready": _get("Model readiness", "Ready", name=name_param, codes=("401", "404", "503")),
            "/v2/repository/index": {"post": {
                "summary": "The models and their states (READY, LOADING, UNAVAILABLE); body {\"ready\": true}: "
                           "only the ready ones",
                "responses": {"200": {"description": "ok", **_json("RepositoryIndex")}, "400": _ERROR, "401": _ERROR}}},
            "/v2/models/{name}/infer": {"post": {
                "summary": "Inference (v2 tensors)", "parameters": name_param,
                "requestBody": {"required": True, **_json("InferRequest")},
                "responses": {"200": {"description": "ok", **_json("InferResponse")}, **errors}}},
            "/v1/models/{name}/predict": {"post": {
                "summary": "Inference on records: one object of column values per row", "parameters": name_param,
                "requestBody": {"required": True, **_json("PredictRequest")},
                "responses": {"200": {"description": "ok", **_json("PredictResponse")}, **errors}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _ERROR}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
            "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}, "name": {"type": "string"}}},
            "ServerMetadata": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}}}},
            "TensorMetadata": {"type": "object", "properties": {
                "name": {"type": "string"}, "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}}}},
            "ModelMetadata": {"type": "object", "properties": {
                "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}}}},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": tensor},
                "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
            "InferResponse": {"type": "object", "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": tensor}}},
            "RepositoryIndex": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "LOADING", "UNAVAILABLE"]},
                "reason": {"type": "string"}}}},
            "PredictRequest": {"type": "object", "required": ["instances"], "properties": {
                "instances": {"type": "array", "items": {"type": "object"}}}},
            "PredictResponse": {"type": "object", "properties": {
                "predictions": {"type": "array", "items": {"type": "object"}}}},
        }},
    }


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lakeinfer serve</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee;padding:0 .3em}
li{margin:.3em 0}</style></head>
<body><h1>lakeinfer serve</h1>
<p>The <a href="/openapi.json">OpenAPI document</a> describes every endpoint.</p>
<ul id="paths"></ul>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const list = document.getElementById('paths');
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const li = document.createElement('li');
      li.innerHTML = '<code>' + method.toUpperCase() + ' ' + path + '</code> ' + (op.summary || '');
      list.appendChild(li);
    }
  }
});
</script></body></html>
"""
