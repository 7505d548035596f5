"""Checkpoint, inference model or seeded random weights -> Paddle Serving's model layout, self-checked."""

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from export import calibration, checkpoint, inference_io, int8, onnx_export
from export.card import LABELS_FILE, CardFacts, Provenance, build_card, write_card
from export.errors import ExportError, LabelsError, OutputError, ParityError
from export.models import ModelSpec, get_spec
from export.stats import count_flops, count_params
from serving.files import umasked
from serving.model_config import CLIENT_CONF, FLOAT32, SERVER_CONF, VarSpec, build_config, write_config

DEFAULT_LABELS = Path(__file__).parent / "data" / "imagenet1k_label_list.txt"
LOGIT_RTOL = 1e-4  # the verdict: log-probabilities agree within this share of the row's largest |logit| ...
LOGIT_ATOL = 1e-3  # ... plus this; float32 programs reorder sums, so large logits carry large absolute error
# Log-probabilities below float32's smallest normal probability cannot be told apart once exponentiated.
LOGP_FLOOR = float(np.log(np.finfo(np.float32).tiny))
PARITY_SEED = 20240601
PARITY_BATCH = 2

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """One export: which network, where its weights come from, where it goes."""

    model: str
    out: Path
    weights: Path | None = None
    inference_model: Path | None = None
    random_init: int | None = None
    num_classes: int = 1000
    labels: Path = DEFAULT_LABELS
    force: bool = False
    onnx: bool = False
    calib_images: Path | None = None  # set: also quantize the ONNX twin to INT8, calibrated on these images
    min_agreement: float = int8.DEFAULT_MIN_AGREEMENT


@dataclass(frozen=True)
class ExportResult:
    """What the export measured."""

    params: int
    flops: int
    parity_max_abs_diff: float
    card: dict


class WithSoftmax(nn.Layer):
    """PaddleClas's ExportModel: the backbone with softmax appended, so the fetch is probabilities."""

    def __init__(self, backbone: nn.Layer) -> None:
        super().__init__()
        self.backbone = backbone
        self.softmax = nn.Softmax(axis=-1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.softmax(self.backbone(x))


def read_labels(path: Path, num_classes: int) -> list[str]:
    """The label file's non-empty lines; their count must equal the class count."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read label file {path}: {exc}") from None
    if len(lines) != num_classes:
        raise LabelsError(f"label file {path} has {len(lines)} labels but the model has {num_classes} classes")
    return lines


def make_network(request: ExportRequest, spec: ModelSpec) -> tuple[nn.Layer, Provenance]:
    """Build the network and fill it from the requested weights source."""
    if request.random_init is not None:
        network = calibration.random_network(spec, request.num_classes, request.random_init)
        return network, Provenance("random-init", seed=request.random_init)
    network = spec.build(request.num_classes)
    if request.weights is not None:
        state = checkpoint.to_structured_keys(checkpoint.load_pdparams(request.weights), spec.name)
        provenance = Provenance("checkpoint", files=(Path(request.weights),))
    else:
        state = checkpoint.to_structured_keys(inference_io.read_program_params(request.inference_model), spec.name)
        provenance = Provenance("inference-model", files=inference_io.find_program(request.inference_model))
    checkpoint.apply_state(network, state, spec.name, request.num_classes)
    return network, provenance


def self_check(exported: WithSoftmax, server_dir: Path, spec: ModelSpec, source: Path | None) -> tuple[float, str]:
    """Compare the program (and ONNX twin, and source model) with the network's logits; returns max |prob diff|.

    The verdict is on log-probabilities, within a tolerance relative to the logits' scale: an untrained network
    (huge logits, one-hot softmax) may flip the argmax of near-tied logits on float32 rounding alone, which a
    probability bound would call a difference of 1 although the program is right.
    """
    batch = calibration.synthetic_images(PARITY_BATCH, spec.crop_size, PARITY_SEED)
    predictor = inference_io.create_predictor(server_dir)
    served = inference_io.run(predictor, batch)[0]
    with paddle.no_grad():
        logits = exported.backbone(paddle.to_tensor(batch)).numpy()
    outputs = {"the exported program": served}
    onnx_file = server_dir / onnx_export.ONNX_FILE
    if onnx_file.is_file():
        outputs["the ONNX twin"] = onnx_export.run_onnx(onnx_file, batch)
    if source is not None:
        outputs["the source model"] = _as_probabilities(_run_source(source, batch))
    expected = softmax(logits)
    for name, probabilities in outputs.items():
        excess = logprob_excess(probabilities, logits)
        if excess > 0:
            raise ParityError(f"{name} differs from the network: log-probabilities are off by {excess:.3g} beyond "
                              f"the tolerance ({LOGIT_RTOL:g} x the largest |logit| + {LOGIT_ATOL:g})")
    diff = max(float(np.abs(probabilities - expected).max()) for probabilities in outputs.values())
    return diff, predictor.get_output_names()[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def logprob_excess(probabilities: np.ndarray, logits: np.ndarray) -> float:
    """How far (largest, in nats) served log-probabilities stray beyond the tolerance around log_softmax(logits).

    <= 0 means they agree. |d log_softmax| <= 2 max |d logit|, so a logit-level relative bound carries over.
    """
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    with np.errstate(divide="ignore"):
        served = np.log(probabilities.astype(np.float64))
    gap = np.abs(np.maximum(served, LOGP_FLOOR) - np.maximum(expected, LOGP_FLOOR))
    tolerance = 2 * (LOGIT_RTOL * np.abs(logits).max(axis=-1, keepdims=True) + LOGIT_ATOL)
    return float((gap - tolerance).max())


def _run_source(source: Path, batch: np.ndarray) -> np.ndarray:
    return inference_io.run(inference_io.create_predictor(source), batch)[0]


def _as_probabilities(output: np.ndarray) -> np.ndarray:
    """A source model exported without softmax (infer_add_softmax=False) gives logits: softmax them."""
    if output.min() >= 0 and np.allclose(output.sum(axis=-1), 1.0, atol=1e-3):
        return output
    return softmax(output)


def write_model_configs(staging: Path, spec: ModelSpec, num_classes: int, fetch_name: str) -> None:
    """serving_server_conf + serving_client_conf (and stream twins): feed `x`, fetch alias `prediction`."""
    size = spec.crop_size
    config = build_config(
        feeds=[VarSpec(inference_io.FEED_NAME, inference_io.FEED_NAME, FLOAT32, (3, size, size))],
        fetches=[VarSpec(fetch_name, "prediction", FLOAT32, (num_classes,))],
    )
    (staging / "serving_client").mkdir()
    write_config(config, staging / "serving_server" / SERVER_CONF)
    write_config(config, staging / "serving_client" / CLIENT_CONF)


def export(request: ExportRequest, progress: Progress = lambda step: None) -> ExportResult:
    """Run the whole export into a staging folder beside `out`, then rename it into place."""
    spec = validate(request)
    staging = _staging_dir(Path(request.out), request.force)
    try:
        result = _export_into(staging, request, spec, progress)
        progress("moving into place")
        _move_into_place(staging, Path(request.out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def validate(request: ExportRequest) -> ModelSpec:
    """The checks that need no work done: fail before anything is built or written."""
    spec = get_spec(request.model)
    if request.num_classes < 1:
        raise ExportError(f"--num-classes must be at least 1, got {request.num_classes}")
    read_labels(request.labels, request.num_classes)
    if request.weights is not None:
        checkpoint.checked_file(Path(request.weights))
    if request.inference_model is not None:
        inference_io.find_program(request.inference_model)
    if request.calib_images is not None:
        if not request.onnx:
            raise ExportError("INT8 quantizes the ONNX twin: --int8 needs --onnx")
        if not 0 <= request.min_agreement <= 1:
            raise ExportError(f"--min-agreement must be between 0 and 1, got {request.min_agreement}")
        int8.calibration_images(request.calib_images)
    return spec


def _export_into(staging: Path, request: ExportRequest, spec: ModelSpec, progress: Progress) -> ExportResult:
    progress(f"building {spec.name} and loading weights")
    network, provenance = make_network(request, spec)
    progress("counting params and FLOPs")
    params, flops = count_params(network), count_flops(network, spec.crop_size)
    exported = WithSoftmax(network)
    exported.eval()
    progress("saving the inference program")
    inference_io.save_program(exported, staging / "serving_server", spec.crop_size)
    if request.onnx:
        progress("converting to ONNX (paddle2onnx)")
        onnx_export.convert(staging / "serving_server")
    progress("self-check through paddle.inference")
    diff, fetch_name = self_check(exported, staging / "serving_server", spec, request.inference_model)
    progress("writing configs, labels and model card")
    write_model_configs(staging, spec, request.num_classes, fetch_name)
    shutil.copyfile(request.labels, staging / LABELS_FILE)
    card = build_card(spec, CardFacts(request.num_classes, params, flops, fetch_name, diff, provenance, request.onnx))
    if request.calib_images is not None:
        write_card(card, staging)  # the quantizer preprocesses through the card's transforms
        progress("quantizing to INT8 (ONNX Runtime) and measuring it on held-out images")
        card["int8"] = int8.quantize(staging / "serving_server", request.calib_images, request.min_agreement,
                                     request.force)
    write_card(card, staging)
    return ExportResult(params, flops, diff, card)


def _staging_dir(out: Path, force: bool) -> Path:
    """A fresh hidden folder beside `out`, after checking `out` may be (re)placed."""
    if out.exists() and not force:
        raise OutputError(f"output folder {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    blocking_file = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking_file is not None:
        raise OutputError(f"cannot write output folder {out}: {blocking_file} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(umasked(0o777))
        return staging
    except OSError as exc:
        raise OutputError(f"cannot write output folder {out}: {exc.strerror or exc}") from None


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an old `out` is moved aside first and removed last."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{staging.name}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
