"""The API fuzzed from its own OpenAPI schema (Schemathesis): no 5xx for any generated request, every status and
response as documented."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="the dev extra (make install puts it in .venv)")
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

pytestmark = pytest.mark.slow


def _schema():
    from dynrefer.inference.predictor import Predictor
    from dynrefer.serve.app import create_app
    from dynrefer.serve.inputs import Limits

    app = create_app(Predictor("builtin"), limits=Limits(max_upload_bytes=1_000_000, max_pixels=500_000),
                     examples={"scene": b"\x89PNG"})
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_api_never_fails_with_a_server_error():
    operations = [result.ok() for result in _schema().get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/health", "/v1/describe", "/v1/views", "/v1/examples/{name}"}
    calls = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            # random base64 strings are valid by the schema but not images: a 4xx is the right answer to them
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            calls.append(response.status_code)

        check()
    print(f"[fuzz] {len(calls)} requests, statuses {sorted(set(calls))}")
    assert len(calls) >= 40 and max(calls) < 500
