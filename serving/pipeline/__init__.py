"""Paddle Serving's pipeline API: `from serving.pipeline import Op, WebService` replaces
`from paddle_serving_server.web_service import WebService, Op`."""

from serving.pipeline.op import Op, RequestOp, ResponseOp
from serving.pipeline.web_service import WebService

__all__ = ["Op", "RequestOp", "ResponseOp", "WebService"]
