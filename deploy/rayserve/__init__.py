"""The classification pipeline as a Ray Serve application (`pip install '.[ray]'`; python -m deploy.rayserve)."""

from deploy.rayserve.app import PipelineReplica, Source, application, build_app, deploy, read, serve_options

__all__ = ["PipelineReplica", "Source", "application", "build_app", "deploy", "read", "serve_options"]
