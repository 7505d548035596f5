"""Predictors: a local_service_conf run on Paddle Inference in process, or model servers over brpc/gRPC."""

from serving.predictor.remote import RemotePredictor
from serving.predictor.settings import PredictorSettings, settings_from_conf

__all__ = ["LocalPredictor", "PredictorSettings", "RemotePredictor", "apply_settings", "settings_from_conf"]


def __getattr__(name: str) -> object:
    """Load Paddle only when the predictor itself is used, so settings stay cheap to import and check."""
    if name == "LocalPredictor":
        from serving.predictor.local import LocalPredictor

        return LocalPredictor
    if name == "apply_settings":
        from serving.predictor.paddle_predictor import apply_settings

        return apply_settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
