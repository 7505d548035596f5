"""GeneralModelService on one model version: feeds in (tensors, or image files as base64 STRING), outputs out."""

import base64
import binascii
from typing import Any

import numpy as np

from serving.config import LimitsConfig
from serving.context import RequestContext
from serving.errors import InputError, error_of
from serving.images import check_image_count
from serving.model_card import ModelCard
from serving.proto import general_model_service_pb2 as gm
from serving.proto.general_model_config_pb2 import GeneralModelConfig
from serving.tensors import ElemType, to_array, to_tensor

SERVICE_NAME = gm.DESCRIPTOR.services_by_name["GeneralModelService"].full_name  # from the .proto
ENGINE_NAME = "general_infer_0"


def failure_response(exc: BaseException, request: gm.Request) -> gm.Response:
    """err_no and err_msg from the error table, with the caller's log_id."""
    err_no, err_msg = error_of(exc)
    return gm.Response(err_no=err_no, err_msg=err_msg, log_id=request.log_id)


class ModelService:
    """One model version's GeneralModelService calls; errors are raised, and the data plane's endpoint answers them in
    err_no / err_msg, as Paddle Serving's clients expect."""

    def __init__(self, predictor: Any, model_config: GeneralModelConfig, card: ModelCard | None,
                 limits: LimitsConfig) -> None:
        self.predictor = predictor
        self.model_config = model_config
        self.card = card
        self.limits = limits
        self.feeds = {key for var in model_config.feed_var for key in (var.name, var.alias_name)}
        self.names = {var.alias_name: var.name for var in model_config.fetch_var}

    def metadata(self) -> dict:
        """Feeds and fetches by alias, the engine and precision served (and why that engine, for auto) and, for
        INT8, its recorded agreement with FP32."""
        engine = getattr(self.predictor, "engine_info", {})
        info = {"feeds": [var.alias_name for var in self.model_config.feed_var],
                "fetches": [var.alias_name for var in self.model_config.fetch_var],
                "engine": engine.get("engine"), "precision": engine.get("precision")}
        if engine.get("engine_choice"):
            info["engine_choice"] = engine["engine_choice"]
        if info["precision"] == "int8" and self.card is not None and self.card.int8:
            info["int8_held_out"] = self.card.int8.get("held_out")
        return info

    def run(self, request: gm.Request, ctx: RequestContext) -> gm.Response:
        """Decode the feeds, predict within the context's deadline, encode the fetches."""
        feed = {self._feed_key(tensor): self._feed_value(tensor) for tensor in request.tensor}
        if not feed:
            raise InputError("request has no tensor; send one per feed "
                             f"({', '.join(var.alias_name for var in self.model_config.feed_var)})")
        outputs = self.predictor.predict(feed, list(request.fetch_var_names) or None, ctx)
        tensors = [to_tensor(self.names.get(alias, alias), alias, value) for alias, value in outputs.items()]
        return gm.Response(outputs=[gm.ModelOutput(tensor=tensors, engine_name=ENGINE_NAME)], log_id=request.log_id)

    def _feed_key(self, tensor: gm.Tensor) -> str:
        """The feed a tensor names (by alias or name); image files under the client config's alias feed the image."""
        if tensor.elem_type == ElemType.STRING and len(self.model_config.feed_var) == 1:
            return self.model_config.feed_var[0].alias_name
        named = [key for key in (tensor.alias_name, tensor.name) if key]
        known = next((key for key in named if key in self.feeds), None)
        if known is None:
            raise InputError(f"tensor {' / '.join(repr(key) for key in named) or '(unnamed)'} names no feed of this "
                             f"model; its feeds are {', '.join(var.alias_name for var in self.model_config.feed_var)}")
        return known

    def _feed_value(self, tensor: gm.Tensor) -> np.ndarray:
        """A numeric tensor as an array; STRING elements are image files, preprocessed per the model card."""
        if tensor.elem_type != ElemType.STRING:
            return to_array(tensor)
        if self.card is None:
            raise InputError("this model has no model card, so it cannot preprocess image files; send FP32 tensors")
        if not tensor.data:
            raise InputError(f"feed {tensor.alias_name or tensor.name!r} holds no image")
        check_image_count(len(tensor.data), self.limits.max_images_per_request)
        check_image_count(len(tensor.data), self.predictor.max_batch_size, "the model's max_batch_size")
        images = []
        for index, text in enumerate(tensor.data):
            try:
                images.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise InputError(f"feed {tensor.alias_name or tensor.name!r}[{index}] is not base64 text of an "
                                 "image file") from None
        return self.card.transforms.batch(images, self.limits.max_image_pixels, self.limits.max_request_pixels)
