"""`python -m bench.paddle_int8`: is Paddle Inference INT8 on CPU worth serving beside ONNX Runtime's INT8?

Paddle's route: the legacy static program (paddle.static.quantization does not take Paddle 3's PIR programs),
post-training quantization (abs_max activations, channel-wise weights) on the same calibration images, run by
oneDNN's int8 passes. Its FP32 and INT8 predictors and ONNX Runtime's two sessions of the cached export are timed
at batch 1 in one process, runs interleaved, so background load hits all four alike.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.models import EXPORT_SEED, WORKER_TIMEOUT_S, WorkerError, add_standalone_options, ensure_model, quiet_env
from bench.report import markdown_table, write_outputs
from export.measure import WorkerProcessError, run_in_fresh_process

COMMAND = "python -m bench.paddle_int8"
LEGACY_PROGRAM = {"FLAGS_enable_pir_api": "0"}  # in the worker's environment, before Paddle is imported
ENGINES = ("paddle_fp32", "paddle_int8", "onnxruntime_fp32", "onnxruntime_int8")
LABELS = ("Paddle + oneDNN FP32", "Paddle + oneDNN INT8", "ONNX Runtime FP32", "ONNX Runtime INT8")
QUANTIZED_OPS = ["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"]


def paddle_predictors(model: str, work: Path, calib: list, threads: int) -> dict:
    """The model (seeded as the bench's export) as a legacy program, FP32 and post-training INT8 predictors."""
    import paddle
    from paddle import inference
    from paddle.static.quantization import PostTrainingQuantization

    from export import calibration
    from export.exporter import WithSoftmax
    from export.models import get_spec

    spec = get_spec(model)
    network = WithSoftmax(calibration.random_network(spec, 1000, EXPORT_SEED))
    network.eval()
    feed = paddle.static.InputSpec([None, 3, spec.crop_size, spec.crop_size], "float32", "x")
    paddle.jit.save(paddle.jit.to_static(network, input_spec=[feed], full_graph=True), str(work / "fp32" / "inference"))
    paddle.enable_static()
    quantizer = PostTrainingQuantization(
        executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=str(work / "fp32"),
        model_filename="inference.pdmodel", params_filename="inference.pdiparams",
        data_loader=lambda: ({"x": batch} for batch in calib), batch_nums=len(calib), algo="abs_max",
        quantizable_op_type=QUANTIZED_OPS, onnx_format=False)
    quantizer.quantize()
    quantizer.save_quantized_model(str(work / "int8"), model_filename="inference.pdmodel",
                                   params_filename="inference.pdiparams")
    paddle.disable_static()

    def predictor(folder: Path, int8: bool) -> object:
        config = inference.Config(str(folder / "inference.pdmodel"), str(folder / "inference.pdiparams"))
        config.disable_gpu()
        config.enable_mkldnn()
        config.switch_ir_optim(True)
        config.set_cpu_math_library_num_threads(threads)
        config.disable_glog_info()
        if int8:
            config.enable_mkldnn_int8()
        return inference.create_predictor(config)

    return {"paddle_fp32": predictor(work / "fp32", False), "paddle_int8": predictor(work / "int8", True)}


def run_paddle(predictor: object, batch: object) -> object:
    """One Paddle Inference run; the probabilities."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def worker(spec: dict) -> dict:
    """In a process with Paddle's legacy programs: quantize, check agreement on the calibration images, time."""
    import numpy as np
    import onnxruntime

    from bench.calibration import calibration_folder
    from serving.model_card import load_card

    server_dir, threads = Path(spec["server_dir"]), spec["threads"]
    with tempfile.TemporaryDirectory(prefix="paddle-int8-") as scratch:
        transforms = load_card(server_dir).transforms
        images = sorted(calibration_folder(Path(scratch)).iterdir())
        calib = [transforms(path.read_bytes())[None] for path in images]
        paddle = paddle_predictors(spec["model"], Path(scratch), calib, threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {name: onnxruntime.InferenceSession(str(server_dir / file), options,
                                                   providers=["CPUExecutionProvider"])
                for name, file in (("onnxruntime_fp32", "inference.onnx"), ("onnxruntime_int8", "inference.int8.onnx"))}
    runs = {**{name: (lambda batch, p=p: run_paddle(p, batch)) for name, p in paddle.items()},
            **{name: (lambda batch, s=s: s.run(None, {"x": batch})[0]) for name, s in sessions.items()}}
    top1 = {name: [int(run(image).argmax()) for image in calib] for name, run in runs.items()}
    batch = calib[0]
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(spec["warmup"] + spec["runs"]):
        for name, run in runs.items():
            start = time.perf_counter()
            run(batch)
            if index >= spec["warmup"]:
                samples[name].append((time.perf_counter() - start) * 1000)
    return {"model": spec["model"], "threads": threads, "images": len(calib),
            "median_ms": {name: float(np.median(values)) for name, values in samples.items()},
            "int8_top1_agreement": {
                "paddle": float(np.mean(np.equal(top1["paddle_fp32"], top1["paddle_int8"]))),
                "onnxruntime": float(np.mean(np.equal(top1["onnxruntime_fp32"], top1["onnxruntime_int8"])))},
            "samples_ms": samples}


def run_worker(spec: dict) -> dict:
    """The worker in a fresh interpreter whose Paddle builds legacy programs."""
    try:
        return run_in_fresh_process(["bench.paddle_int8", "--worker", json.dumps(spec)], WORKER_TIMEOUT_S,
                                    {**quiet_env(), **LEGACY_PROGRAM})
    except WorkerProcessError as exc:
        raise WorkerError(f"paddle_int8 worker {exc}: " + "\n".join(exc.stderr_lines[-5:])) from None


def markdown(report: dict) -> str:
    """The table committed under bench/results, with the command, settings and the verdict."""
    settings = report["settings"]
    header = ["Model", "threads", *LABELS, "Paddle INT8 ÷ ONNX Runtime INT8", "top-1 agreement Paddle / ORT"]
    rows = [[row["model"], str(row["threads"]), *(f"{row['median_ms'][name]:.2f}" for name in ENGINES),
             f"{row['median_ms']['paddle_int8'] / row['median_ms']['onnxruntime_int8']:.2f}",
             f"{row['int8_top1_agreement']['paddle']:.2f} / {row['int8_top1_agreement']['onnxruntime']:.2f}"]
            for row in report["results"]]
    slower = all(row["median_ms"]["paddle_int8"] > row["median_ms"]["onnxruntime_int8"] for row in report["results"])
    verdict = ("Paddle Inference INT8 is slower than ONNX Runtime INT8 on every model here: the kit serves INT8 "
               "with ONNX Runtime only." if slower else
               "Paddle Inference INT8 beat ONNX Runtime INT8 on some model here: worth offering.")
    intro = (f"`{settings['command']}`: batch-1 latency in ms, median of {settings['runs']} interleaved runs after "
             f"{settings['warmup']} warm-up runs, all four engines in one process; Paddle: legacy program, "
             "paddle.static.quantization post-training quantization (abs_max, channel-wise weights) on "
             "bench.calibration's images, oneDNN int8; ONNX Runtime: the cached export's inference.onnx and "
             "inference.int8.onnx. Top-1 agreement of each INT8 with its FP32 on the calibration images (random "
             "weights: a check that both quantized models work, not of accuracy).\n\n")
    return intro + markdown_table(header, rows) + "\n" + verdict + "\n"


def main(argv: list[str] | None = None) -> int:
    """Each model's export (cached, with its INT8 twin), then the worker; the report under --out."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        Path(argv[2]).write_text(json.dumps(worker(json.loads(argv[1]))), encoding="utf-8")
        return 0
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    add_standalone_options(parser, ["AlexNet", "SqueezeNet1_1"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    results = []
    for model in args.models:
        server_dir = ensure_model(model, args.models_dir, int8=True)
        print(f"{model}: quantizing with Paddle and timing ...", file=sys.stderr)
        results.append(run_worker({"model": model, "server_dir": str(server_dir), "threads": args.threads,
                                   "runs": args.runs, "warmup": args.warmup}))
    report = {"settings": {"command": " ".join([COMMAND, *argv]), "runs": args.runs, "warmup": args.warmup},
              "results": results}
    for path in write_outputs(args.out, "paddle_int8", report, markdown(report)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
