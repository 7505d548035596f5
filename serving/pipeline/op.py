"""Paddle Serving's Op API: the hooks a web_service.py overrides, and the framework's calls around them."""

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving import metrics
from serving.batching import Batcher
from serving.config import LimitsConfig, OpConfig
from serving.context import RequestContext
from serving.errors import DeadlineExceededError, InitError, ProductError, ServingError, TypeCheckError
from serving.images import check_image_count
from serving.model_card import CARD_FILE
from serving.tensors import as_feed_types

log = logging.getLogger("serving.pipeline")

# Op constructor arguments that mirror config.yml `op.<name>` keys; None means "take config.yml's value".
_CONFIG_ARGS = ("concurrency", "timeout", "retry", "batch_size", "auto_batching_timeout", "server_endpoints",
                "fetch_list", "client_config")


class Op:
    """A pipeline stage: preprocess -> process (the model) -> postprocess, named like its config.yml entry."""

    def __init__(self, name: str | None = None, input_ops: list["Op"] | None = None, **config_args: Any) -> None:
        unknown = set(config_args) - set(_CONFIG_ARGS) - {"client_type", "local_service_handler", "jump_to_ops",
                                                          "output_ops"}
        if unknown:
            raise TypeError(f"Op() got unexpected arguments {sorted(unknown)}")
        self.name = name or type(self).__name__
        self.input_ops = list(input_ops or [])
        self._overrides = {key: value for key, value in config_args.items() if key in _CONFIG_ARGS and value}
        self.config = OpConfig()
        self.limits = LimitsConfig()
        self.model_config: str | None = None
        self.dynamic_shape_info: dict = {}
        self.predictor: Any = None
        self._batcher: Batcher | None = None
        # Ours and newer overrides of process() take the request context; Paddle Serving-era ones do not.
        self._process_takes_ctx = "ctx" in inspect.signature(self.process).parameters

    # ---- hooks a user overrides -------------------------------------------------------------------------------
    def init_op(self) -> None:
        """Load labels, build transforms: runs once, before the first request."""

    def set_dynamic_shape_info(self) -> None:
        """Set `self.dynamic_shape_info` (min/max/opt_input_shape) for TensorRT, if the defaults do not fit."""

    def preprocess(self, input_dicts: dict[str, dict], data_id: int = 0, log_id: int = 0) -> tuple:
        """Default: pass the single input op's dict on. Returns (dict, is_skip_process, prod_errcode, prod_errinfo)."""
        ((_, input_dict),) = input_dicts.items()
        return input_dict, False, None, ""

    def process(self, feed_batch: list[dict[str, np.ndarray]], typical_logid: int = 0,
                ctx: RequestContext | None = None) -> tuple:
        """Run the model on the feed (merged with other requests' when batching); returns (fetch_dict, code, info).

        An override with Paddle Serving's two-argument signature still works; it gets no `ctx`. Arrays are cast
        to the model's feed types within their kind, as Paddle Serving does (Div(255) makes float64).
        """
        ctx = ctx or RequestContext(log_id=typical_logid)
        feed = as_feed_types(feed_batch[0], self.predictor.feed_vars)
        if self._batcher is not None:
            return self._batcher.predict(feed, ctx), None, ""
        return self._predict(feed, ctx), None, ""

    @property
    def fetch_names(self) -> list[str] | None:
        """op.fetch_list, else local_service_conf.fetch_list, else every fetch of the model."""
        conf = self.config.local_service_conf
        return self.config.fetch_list or (conf.fetch_list if conf else None)

    def postprocess(self, input_dicts: dict[str, dict], fetch_dict: dict, data_id: int = 0, log_id: int = 0) -> tuple:
        """Default: the fetch dict as the result. Returns (result_dict, prod_errcode, prod_errinfo)."""
        return fetch_dict, None, ""

    # ---- framework side ---------------------------------------------------------------------------------------
    def configure(self, config: OpConfig, limits: LimitsConfig) -> None:
        """Take config.yml's settings; constructor arguments win, as in Paddle Serving."""
        for key, value in self._overrides.items():
            setattr(config, key, value)
        self.config = config
        self.limits = limits
        if config.server_endpoints:
            self.model_config = str(Path(config.client_config).parent)
        elif config.local_service_conf is not None:
            self.model_config = config.local_service_conf.model_config

    def check_image_count(self, count: int) -> None:
        """Refuse, before decoding, more images than limits.max_images_per_request or one predictor call takes."""
        check_image_count(count, self.limits.max_images_per_request)
        conf = self.config.local_service_conf
        if conf is not None and not self.remote:
            check_image_count(count, conf.max_batch_size, f"op.{self.name}.local_service_conf.max_batch_size")

    @property
    def remote(self) -> bool:
        """True when model servers (server_endpoints) answer process()."""
        return bool(self.config.server_endpoints)

    def start(self, build_predictor: Any) -> None:
        """Create the predictor (if this op has a model, local or remote) and run the user's init_op."""
        self.set_dynamic_shape_info()
        if self.remote or self.config.local_service_conf is not None:
            try:
                self.predictor = build_predictor(self)
            except ServingError:
                raise
            except Exception as exc:
                raise InitError(f"op {self.name}: cannot create the predictor: {exc}") from exc
            # a repository model's predictor names the version folder it serves, whose model card init_op reads
            self.model_config = getattr(self.predictor, "model_dir", self.model_config)
            if hasattr(self.predictor, "warm_up"):
                self.predictor.warm_up()
            engine_info = getattr(self.predictor, "engine_info", {})
            if engine_info.get("engine_choice"):
                log.info("op %s runs %s: %s", self.name, engine_info["engine"], engine_info["engine_choice"])
            engine_ops = engine_info.get("tensorrt_engine_ops")
            if engine_ops is not None:  # a TensorRT op: how much of its model TensorRT took, 0 when it is off
                metrics.TENSORRT_OPS.labels(op=self.name).set(engine_ops)
            if self.batching:
                conf = self.config.local_service_conf
                self._batcher = Batcher(self._predict,
                                        max_requests=self.config.batch_size,
                                        max_rows=conf.max_batch_size if conf and not self.remote else 1 << 20,
                                        timeout_s=self.config.auto_batching_timeout / 1000,
                                        workers=self.config.concurrency, max_queue=self.limits.max_queue)
        self.init_op()

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        metrics.STAGE.labels(op=self.name, stage=stage).observe(now - started)
        return now

    def _predict(self, feed: dict[str, np.ndarray], ctx: RequestContext) -> dict[str, np.ndarray]:
        """The predictor call, with its batch size counted; ctx carries the log id and deadline to it."""
        metrics.BATCH.labels(op=self.name).observe(len(next(iter(feed.values()))))
        return self.predictor.predict(feed, self.fetch_names, ctx)

    def metadata(self) -> dict:
        """Feeds and fetches of this op's model, and its model card's facts, when it has a model."""
        if not self.has_model:
            return {}
        model_config = getattr(self.predictor, "model_dir", self.model_config)  # a repository model's serving version
        info: dict = {"model_config": model_config, "remote": self.remote,
                      "feeds": list(self.predictor.feed_names), "fetches": list(self.predictor.fetch_aliases),
                      **getattr(self.predictor, "engine_info", {})}
        card = Path(model_config).parent / CARD_FILE
        if card.is_file():
            facts = yaml.safe_load(card.read_text(encoding="utf-8"))
            info.update({key: facts.get(key) for key in ("model", "num_classes", "input", "preprocessing", "params",
                                                          "flops", "weights", "paddle_version")})
            if info.get("precision") == "int8" and "int8" in facts:
                info["int8_held_out"] = facts["int8"].get("held_out")
        return info

    @property
    def batching(self) -> bool:
        """Paddle Serving merges requests when batch_size > 1 and auto_batching_timeout > 0."""
        return self.config.batch_size > 1 and self.config.auto_batching_timeout > 0

    @property
    def threads(self) -> int:
        """Requests this op works on at once: enough to fill `concurrency` batches when batching."""
        return self.config.concurrency * (self.config.batch_size if self.batching else 1)

    def stop(self) -> None:
        """Release the batcher's loops and the predictor's connections to model servers."""
        if self._batcher is not None:
            self._batcher.close()
        if hasattr(self.predictor, "close"):
            self.predictor.close()

    @property
    def has_model(self) -> bool:
        """Ops without a model (no local_service_conf) skip process(), as in Paddle Serving."""
        return self.predictor is not None

    def run(self, input_dicts: dict[str, dict], data_id: int, ctx: RequestContext) -> dict:
        """preprocess -> process -> postprocess for one request, timed per stage, product codes raised as errors."""
        if ctx.expired:
            raise DeadlineExceededError(f"op {self.name}: the request's deadline passed while it was queued; "
                                        "dropped before preprocess")
        log_id = ctx.log_id
        started = time.perf_counter()
        feed, skip, code, info = _unpack(self.preprocess(input_dicts, data_id, log_id), 4, self.name, "preprocess")
        _raise_product_error(self.name, "preprocess", code, info)
        started = self._timed("preprocess", started)
        fetch = feed
        if not skip and self.has_model:
            extra = {"ctx": ctx} if self._process_takes_ctx else {}
            fetch, code, info = _unpack(self.process([feed], log_id, **extra), 3, self.name, "process")
            _raise_product_error(self.name, "process", code, info)
            started = self._timed("process", started)
        result, code, info = _unpack(self.postprocess(input_dicts, fetch, data_id, log_id), 3, self.name,
                                     "postprocess")
        _raise_product_error(self.name, "postprocess", code, info)
        self._timed("postprocess", started)
        if not isinstance(result, dict):
            raise TypeCheckError(f"op {self.name}: postprocess must return a dict, got {type(result).__name__}")
        return result


def _unpack(returned: Any, size: int, op: str, hook: str) -> tuple:
    """Accept the full tuple or, like older Paddle Serving versions, the bare dict."""
    if isinstance(returned, dict):
        return (returned, *((False,) if size == 4 else ()), None, "")
    if not isinstance(returned, tuple) or len(returned) != size:
        raise TypeCheckError(f"op {op}: {hook} must return a {size}-tuple, got {type(returned).__name__}")
    return returned


def _raise_product_error(op: str, hook: str, code: int | None, info: str) -> None:
    if code is not None and code != 0:
        raise ProductError(info or f"op {op}: {hook} failed with product error {code}", code=int(code))


class RequestOp(Op):
    """The DAG's entry: the request's key/value pairs (and tensors) as the first op's input dict."""

    def __init__(self) -> None:
        super().__init__(name="@DAGExecutor")


class ResponseOp(Op):
    """The DAG's exit: checks the last op's result is str -> str, as Paddle Serving's response requires."""

    def __init__(self, input_ops: list[Op]) -> None:
        super().__init__(name="@ResponseOp", input_ops=input_ops)

    def postprocess(self, input_dicts: dict[str, dict], fetch_dict: dict, data_id: int = 0, log_id: int = 0) -> tuple:
        """Merge the final ops' results; every value must be a str."""
        merged: dict[str, str] = {}
        for op_name, result in input_dicts.items():
            for key, value in result.items():
                if not isinstance(value, str):
                    raise TypeCheckError(f"op {op_name}: result value of {key!r} must be str, got "
                                         f"{type(value).__name__}; return str(value)")
                merged[key] = value
        return merged, None, ""
