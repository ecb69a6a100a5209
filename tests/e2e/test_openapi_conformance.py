"""The OpenAPI document against a live `batchgate serve`: Schemathesis with every check.

Schemathesis generates requests from `GET /openapi.json` (examples, boundary values,
fuzzed and invalid data, and multi-step sequences that follow the document's links) and
checks every answer against the document: status codes, media types, headers, bodies,
invalid data refused, valid data accepted, `405` with `Allow`, auth enforced, one key's
jobs hidden from another. Once with API keys off and once with two keys on.

A failure prints Schemathesis's report: each failing check with a `curl` command that
reproduces it. `OPENAPI_RUN_EXAMPLES` (default 25 per operation and phase) and
`OPENAPI_RUN_SEED` (a fixed default, so CI is repeatable) widen a local run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ServeProcess

# The run itself is bounded by its example count; the timeout only catches a hang.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).parents[2]
API_APP = str(REPO / "tests" / "apps" / "apiapp.py")
MAX_EXAMPLES = int(os.environ.get("OPENAPI_RUN_EXAMPLES", "25"))
SEED = os.environ.get("OPENAPI_RUN_SEED", "20261127")
# Each key files its jobs under an owner of its own: Schemathesis checks that one
# identity cannot read what the other created.
KEYS = {"alice": "alice-0f6c2d9e4b8a", "bob": "bob-7d1e5a3c9f20"}

CONFIG = """
[generation]
database = "none"

[output.sanitization]
enabled = false

# DELETE /v1/jobs/{id} cancels a job; the contract keeps the cancelled job readable
# (status `cancelled`, its events end with `cancelled`), which `use_after_free` takes for
# a deleted resource still being served. Every other check runs on these operations.
[[operations]]
include-path-regex = "^/v1/jobs/\\\\{job_id\\\\}(/events)?$"
include-method = "GET"
checks.use_after_free.enabled = false
"""


def run_schemathesis(
    server: ServeProcess, work: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    config = work / "schemathesis.toml"
    config.write_text(CONFIG + "\n".join(extra))
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{server.url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED,
        # One worker: with more, CPython 3.11's ast.parse (called by Hypothesis from
        # several threads at once) can fail with "AST constructor recursion depth mismatch".
        "--workers", "1",
        "--request-timeout", "60",
        "--no-color",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        "COLUMNS": "120",
    }
    return subprocess.run(
        cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def assert_no_failure(result: subprocess.CompletedProcess[str], started: float) -> None:
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"Schemathesis found failures (exit {result.returncode}):\n{output}", False)
    # Shown with -rP: what ran, for the record.
    summary = [line for line in output.splitlines() if "generated" in line or "Links" in line]
    print(*summary, f"schemathesis took {time.monotonic() - started:.1f} s", sep="\n")


def test_openapi_document_holds_with_api_keys_off(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", "--workers", "2", "--max-wait", "30", app=API_APP)
    server.start()
    try:
        started = time.monotonic()
        result = run_schemathesis(server, tmp_path)
    finally:
        server.stop()
    assert_no_failure(result, started)


def test_openapi_document_holds_with_api_keys_on(tmp_path: Path) -> None:
    keys = [arg for key in KEYS.values() for arg in ("--api-key", key)]
    server = ServeProcess(
        tmp_path / "data", "--workers", "2", "--max-wait", "30", *keys, app=API_APP
    )
    server.start()
    auth = tmp_path / "auth.json"
    auth.write_text(
        json.dumps(
            {
                "auth": [
                    {
                        "name": "alice",
                        "fixedHeaders": [
                            {"name": "Authorization", "value": f"Bearer {KEYS['alice']}"}
                        ],
                    },
                    {"name": "bob", "fixedHeaders": [{"name": "X-API-Key", "value": KEYS["bob"]}]},
                ]
            }
        )
    )
    try:
        started = time.monotonic()
        result = run_schemathesis(
            server, tmp_path, f'[auth.wfc]\npath = "{auth}"\npeers = ["alice", "bob"]\n'
        )
    finally:
        server.stop()
    assert_no_failure(result, started)
