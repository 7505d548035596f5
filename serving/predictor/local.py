"""The in-process predictor: a pool of engine instances behind checked feeds and fetches."""

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from serving.context import RequestContext
from serving.errors import DeadlineExceededError, InferenceError, InitError, InputError
from serving.predictor.settings import PredictorSettings, summary
from serving.proto.general_model_config_pb2 import FeedVar, FetchVar, GeneralModelConfig
from serving.tensors import DTYPE_OF, ElemType, feed_vars_by_key

# The wheel's default install serves ONNX exports without Paddle; Paddle Inference is the `paddle` extra.
PADDLE_MISSING = ("engine paddle (Paddle Inference) for {model_dir}, but Paddle is not installed: pip install "
                  "'pipeline-serving-kit[paddle]' (on GPU: paddlepaddle-gpu), or serve an export made with --onnx "
                  "on engine onnxruntime")
# The feed_type codes both engines accept from numpy: the tensor table's dtypes, INT16 aside.
FEED_DTYPES = {code: dtype for code, dtype in DTYPE_OF.items() if code != ElemType.INT16}


def _shape_text(var: FeedVar) -> str:
    """The shape a client must send, e.g. [batch, 3, 224, 224] (? for a variable dim)."""
    return "[" + ", ".join(["batch", *(str(dim) if dim > 0 else "?" for dim in var.shape)]) + "]"


def _engine(settings: PredictorSettings, feeds: list[FeedVar], fetches: list[FetchVar]) -> Any:
    """Paddle Inference or ONNX Runtime, as the settings say; each imported only when used."""
    if settings.engine == "onnxruntime":
        from serving.predictor.ort_engine import OrtEngine

        return OrtEngine(settings, feeds, fetches)
    try:
        from serving.predictor.paddle_predictor import PaddleEngine
    except ModuleNotFoundError as exc:
        if exc.name != "paddle":
            raise
        raise InitError(PADDLE_MISSING.format(model_dir=settings.model_dir)) from None
    return PaddleEngine(settings, feeds, fetches)

class LocalPredictor:
    """`pool_size` predictors per device (one CPU pool, or one pool per GPU card), lent out one call at a time."""

    def __init__(self, settings: PredictorSettings, model_config: GeneralModelConfig, pool_size: int = 1) -> None:
        self._settings = settings
        self._feeds: list[FeedVar] = list(model_config.feed_var)
        self._fetches: list[FetchVar] = list(model_config.fetch_var)
        if not self._feeds or not self._fetches:
            raise InitError(f"model config in {settings.model_dir} lists no feed or no fetch variables")
        self._dtypes = {var.name: self._feed_dtype(var) for var in self._feeds}
        self._engine = _engine(settings, self._feeds, self._fetches)
        self._idle: queue.Queue = queue.Queue()
        for predictor in self._engine.build_pool(max(1, pool_size)):
            self._idle.put(predictor)

    @property
    def max_batch_size(self) -> int:
        """The most rows one predict() call takes."""
        return self._settings.max_batch_size

    @property
    def engine_info(self) -> dict:
        """Which engine runs the model, on what, at what precision; with TensorRT, how many ops it took."""
        info = {"engine": self._settings.engine, "device": self._settings.device, "precision": self._settings.precision}
        choice = {"engine_choice": self._settings.engine_choice} if self._settings.engine_choice else {}
        return {**info, **choice, **self._engine.describe()}

    @property
    def feed_vars(self) -> list[FeedVar]:
        """The model config's feed variables (names, aliases, types, shapes)."""
        return self._feeds

    @property
    def feed_names(self) -> list[str]:
        """Feed aliases in model-config order (what clients send)."""
        return [var.alias_name for var in self._feeds]

    @property
    def fetch_aliases(self) -> list[str]:
        """Fetch aliases in model-config order (the keys of predict's result)."""
        return [var.alias_name for var in self._fetches]

    def predict(self, feed: dict[str, np.ndarray], fetch: list[str] | None = None,
                ctx: RequestContext | None = None) -> dict[str, np.ndarray]:
        """Check the batch against the model config, run it on an idle predictor, return fetches by alias.

        A request whose deadline passed while it waited for an idle predictor is dropped, not computed.
        """
        arrays = self._checked_feed(feed)
        wanted = self._selected_fetch(fetch)
        with self._lease() as predictor:
            if ctx is not None and ctx.expired:
                raise DeadlineExceededError("the request's deadline passed while it waited for an idle predictor")
            try:
                outputs = self._engine.run(predictor, arrays, [var.name for var in wanted])
            except Exception as exc:
                raise InferenceError(f"inference failed on model {self._settings.model_dir}: {summary(exc)}") from exc
        return {var.alias_name: output for var, output in zip(wanted, outputs, strict=True)}

    def warm_up(self) -> None:
        """One zero batch through every pooled instance, so first requests do not pay for kernel selection."""
        feed = {var.alias_name: np.zeros((1, *[max(dim, 1) for dim in var.shape]), self._dtypes[var.name])
                for var in self._feeds}
        for _ in range(self._idle.qsize()):
            self.predict(feed)

    def release(self) -> None:
        """Drop the engine instances so their memory is freed; a model repository calls it once no request holds
        this predictor's version."""
        while not self._idle.empty():
            self._idle.get_nowait()
        self._engine = None

    @contextmanager
    def _lease(self) -> Iterator[Any]:
        """Check out an idle engine instance and always give it back, so errors never shrink the pool."""
        predictor = self._idle.get()
        try:
            yield predictor
        finally:
            self._idle.put(predictor)

    def _feed_dtype(self, var: FeedVar) -> type:
        """The numpy dtype a feed must arrive in; unsupported feed types fail at start, not per request."""
        if var.feed_type not in FEED_DTYPES:
            raise InitError(f"feed {var.alias_name!r} of {self._settings.model_dir} has feed_type {var.feed_type}, "
                            f"which the local predictor cannot feed (supported: {sorted(FEED_DTYPES)})")
        return FEED_DTYPES[var.feed_type]

    def _checked_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Program input name -> array, after matching keys to feeds and checking each array."""
        if not isinstance(feed, dict):
            raise InputError(f"feed must be a dict of name -> array, got {type(feed).__name__}")
        valid = ", ".join(self.feed_names)
        by_key = feed_vars_by_key(feed, self._feeds)
        unknown = [key for key in feed if key not in by_key]
        if unknown:
            raise InputError(f"unknown feed {unknown[0]!r}; the model takes: {valid}")
        arrays = {by_key[key].name: self._checked_array(by_key[key], key, value) for key, value in feed.items()}
        missing = [var.alias_name for var in self._feeds if var.name not in arrays]
        if missing:
            raise InputError(f"missing feed {missing[0]!r}; the model takes: {valid}")
        return arrays

    def _checked_array(self, var: FeedVar, key: str, value: object) -> np.ndarray:
        """dtype, rank, non-batch dims and batch size against the model config, named in any error."""
        expected = _shape_text(var)
        if not isinstance(value, np.ndarray):
            raise InputError(f"feed {key!r}: expected a numpy array {expected}, got {type(value).__name__}")
        dtype = np.dtype(self._dtypes[var.name])
        if value.dtype != dtype:
            raise InputError(f"feed {key!r}: got dtype {value.dtype}, expected {dtype}")
        if value.ndim != len(var.shape) + 1 or any(
            0 < want != got for got, want in zip(value.shape[1:], var.shape, strict=True)
        ):
            raise InputError(f"feed {key!r}: got shape {list(value.shape)}, expected {expected}")
        if not 1 <= value.shape[0] <= self._settings.max_batch_size:
            raise InputError(f"feed {key!r}: batch size {value.shape[0]} is outside 1..{self._settings.max_batch_size}"
                             " (max_batch_size)")
        return value

    def _selected_fetch(self, fetch: list[str] | None) -> list[FetchVar]:
        """Fetch variables by alias or name, in request order; None means all of them."""
        if fetch is None:
            return self._fetches
        fetch = [fetch] if isinstance(fetch, str) else list(fetch)
        by_key = {var.alias_name: var for var in self._fetches} | {var.name: var for var in self._fetches}
        unknown = [key for key in fetch if key not in by_key]
        if unknown or not fetch:
            valid = ", ".join(f"{var.alias_name} (name {var.name})" for var in self._fetches)
            what = f"unknown fetch {unknown[0]!r}" if unknown else "empty fetch list"
            raise InputError(f"{what}; the model's fetches are: {valid}")
        return list({by_key[key].name: by_key[key] for key in fetch}.values())
