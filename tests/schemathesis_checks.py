"""Checks of this kit's own for schemathesis runs (tests/schemathesis.toml loads them; so does tests/test_openapi.py).

Paddle Serving's protocols answer every error with HTTP 200 and an err_no, so `not_a_server_error` cannot see a
server bug there: err_no 10000 is the unexpected exception, the Paddle Serving twin of a 500.
"""

import json

import schemathesis
from schemathesis import Case, CheckContext, Response

from serving.errors import ErrorCode


@schemathesis.check
def no_unexpected_err_no(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A Paddle Serving answer whose err_no says an unexpected exception reached the top (err_no 10000)."""
    if "json" not in response.headers.get("content-type", [""])[0]:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None  # response_schema_conformance judges bodies that are not JSON
    if isinstance(body, dict) and body.get("err_no") == ErrorCode.UNKNOWN:
        raise AssertionError(f"err_no {int(ErrorCode.UNKNOWN)} (an unexpected exception): {body.get('err_msg')}")
    return None
