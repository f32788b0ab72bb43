"""schemathesis hooks for tests/reliability/test_fuzz.py (loaded with SCHEMATHESIS_HOOKS).

- Every request carries the Bearer token of the user under test (HPCGW_FUZZ_TOKEN); public
  operations (security: []) get none, and the ``ignored_auth`` check can still send
  requests without it.
- POST /logout gets a token of its own, freshly logged in: the fuzzer must not revoke the
  session every other request runs with.
- Generated job submissions are held (``hold: true``). Visualization jobs cannot be held:
  the test keeps the mock's one slot busy with another user's job, so they stay pending.
"""
from __future__ import annotations

import os

import requests
import schemathesis

API = os.environ.get("HPCGW_FUZZ_API", "")
USER = os.environ.get("HPCGW_FUZZ_USER", "")
PASSWORD = os.environ.get("HPCGW_FUZZ_PASSWORD", "")
TOKEN = os.environ.get("HPCGW_FUZZ_TOKEN", "")


def fresh_token() -> str:
    r = requests.post(f"{API}/login", json={"username": USER, "password": PASSWORD}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["token"]["token"]


@schemathesis.auth()
class GatewayToken:
    def get(self, case, ctx):
        return TOKEN

    def set(self, case, data, ctx):
        token = fresh_token() if case.operation.path.endswith("/logout") else data
        case.headers = dict(case.headers or {})
        case.headers["Authorization"] = f"Bearer {token}"


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() == "POST" and case.operation.path.endswith("/jobs") and isinstance(case.body, dict):
        case.body = {**case.body, "hold": True}
