"""Thin clients for the kit's protocols; `PipelineClient` is Paddle Serving's gRPC pipeline client."""

from clients.pipeline_client import PipelineClient

__all__ = ["PipelineClient"]
