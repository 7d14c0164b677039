"""`airlock mappings import`: an OpenAPI description becomes a mapping file that loads, passes
`airlock check`, and maps the API's writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airlock.console.check import check
from airlock.pipeline.mappings import load_mappings
from tests.helpers.proxy import PROJECT_ROOT, clean_env

DESCRIPTION = {
    "openapi": "3.0.3",
    "info": {"title": "Billing", "version": "1"},
    "paths": {
        "/v1/invoices": {
            "get": {"operationId": "listInvoices"},
            "post": {
                "operationId": "createInvoice",
                "summary": "Create an invoice",
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/NewInvoice"}}}},
            },
        },
        "/v1/invoices/{invoice-id}": {
            "delete": {"operationId": "deleteInvoice"},
        },
        "/v1/accounts/{id}/api-keys": {"post": {"operationId": "createApiKey"}},
    },
    "components": {"schemas": {"NewInvoice": {"type": "object", "properties": {
        "amount": {"type": "integer"}, "currency": {"type": "string"},
        "lines": {"type": "array"}}}}},
}  # fmt: skip


def draft(tmp_path: Path, description: object = DESCRIPTION) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "billing.json"
    source.write_text(json.dumps(description))
    (tmp_path / "mappings").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "mappings", "import",
         "--openapi", str(source), "--provider", "billing", "--host", "billing.internal",
         "--category", "payment",
         "--out", str(tmp_path / "mappings" / "billing.yaml")],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True,
    )  # fmt: skip


def document(method: str, path: str, body: object = None) -> dict[str, object]:
    return {
        "method": method, "scheme": "https", "host": "billing.internal", "port": 443,
        "path": path, "query": {}, "headers": {}, "body": body,
        "body_format": "json" if body else "empty", "body_size": 0, "agent": "a",
    }  # fmt: skip


def test_a_drafted_file_loads_checks_clean_and_maps_the_writes(tmp_path: Path) -> None:
    done = draft(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 write operations" in done.stderr
    assert check([tmp_path / "mappings"]).problems == []
    index = load_mappings(tmp_path / "mappings")
    created = index.map(document("POST", "/v1/invoices", {"amount": 500, "currency": "eur"}))
    assert (created.action, created.category) == ("create_invoice", "payment")
    assert created.params == {"amount": 500, "currency": "eur"}
    deleted = index.map(document("DELETE", "/v1/invoices/in_1"))
    assert (deleted.action, deleted.sensitivity, deleted.params) == (
        "delete_invoice", "high", {"invoice_id": "in_1"},
    )  # fmt: skip
    assert index.map(document("POST", "/v1/accounts/a1/api-keys")).sensitivity == "high"
    assert index.map(document("GET", "/v1/invoices")).action == "http.read"


def test_what_is_not_an_openapi_3_description_is_refused(tmp_path: Path) -> None:
    done = draft(tmp_path, {"swagger": "2.0", "paths": {}})
    assert done.returncode == 2
    assert "only OpenAPI 3 is read" in done.stderr
    assert not (tmp_path / "mappings" / "billing.yaml").exists()
