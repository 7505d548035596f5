"""bench.eval: top-1/top-5 on a labelled set the test writes, locally and through each protocol."""

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.eval import main
from pipelines.web_service import ImageService
from serving.classify import local_predictor
from serving.model_card import load_card
from serving.model_server import ModelServer
from tests.conftest import photo_bytes, running_model_server


@pytest.fixture(scope="module")
def labelled_set(squeezenet_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four images labelled so that top-1 is 2/4 and top-5 is 3/4 for this (random) model."""
    folder = tmp_path_factory.mktemp("val")
    images = photo_bytes() + [cv2.imencode(".png", cv2.flip(cv2.imdecode(np.frombuffer(data, np.uint8), 1), 1))[1]
                              .tobytes() for data in photo_bytes()]
    predict = local_predictor(squeezenet_root)
    labels = [name.replace(",", "") for name in load_card(squeezenet_root / "serving_server").labels]
    lines = []
    for index, data in enumerate(images):
        names, _ = predict(data)
        wanted = [names[0], names[0], names[3], next(n for n in labels if n not in names)][index]
        (folder / "img").mkdir(exist_ok=True)
        (folder / "img" / f"{index}.img").write_bytes(data)
        lines.append(f"img/{index}.img {labels.index(wanted)}")
    (folder / "val_list.txt").write_text("\n".join(lines) + "\n")
    return folder, folder / "val_list.txt"


def run(capsys: pytest.CaptureFixture, model: Path, images: Path, listing: Path, *extra: str) -> tuple[int, str]:
    code = main(["--model", str(model), "--images", str(images), "--list", str(listing), *extra])
    return code, capsys.readouterr().out


def test_local_metrics(capsys: pytest.CaptureFixture, squeezenet_root: Path, labelled_set: tuple[Path, Path]) -> None:
    code, out = run(capsys, squeezenet_root, *labelled_set)
    assert code == 0
    assert "| SqueezeNet1_1 | 0.500 | 0.750 |" in out and "4 images via local; 0 differ" in out


@pytest.fixture(scope="module")
def servers(squeezenet_root: Path) -> Iterator[tuple[ImageService, ModelServer]]:
    pipeline = ImageService(name="imagenet")
    pipeline.prepare_pipeline_config(yml_dict={"http_port": 0, "rpc_port": 0, "op": {"imagenet": {
        "topk": 5, "local_service_conf": {"model_config": str(squeezenet_root / "serving_server")}}}})
    pipeline.start()
    with running_model_server("--model", squeezenet_root / "serving_server", "--port", "0") as model_server:
        yield pipeline, model_server
    pipeline.stop()


@pytest.mark.parametrize("via", ["http", "grpc", "brpc"])
def test_served_predictions_equal_local_ones(capsys: pytest.CaptureFixture, squeezenet_root: Path,
                                             labelled_set: tuple[Path, Path], servers: tuple, via: str) -> None:
    pipeline, model_server = servers
    extra = {"http": ["--url", f"http://127.0.0.1:{pipeline.http_port}/imagenet/prediction"],
             "grpc": ["--endpoint", f"127.0.0.1:{pipeline.rpc_port}"],
             "brpc": ["--endpoint", f"127.0.0.1:{model_server.port}"]}[via]
    code, out = run(capsys, squeezenet_root, *labelled_set, "--via", via, *extra)
    assert code == 0, out
    assert "| SqueezeNet1_1 | 0.500 | 0.750 |" in out and f"4 images via {via}; 0 differ" in out


def test_a_served_model_that_differs_is_reported(capsys: pytest.CaptureFixture, squeezenet_root: Path,
                                                 labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    from export.exporter import ExportRequest, export

    other = tmp_path / "other"
    export(ExportRequest(model="SqueezeNet1_1", out=other, random_init=1))
    with running_model_server("--model", other / "serving_server", "--port", "0") as server:
        code, out = run(capsys, squeezenet_root, *labelled_set, "--via", "brpc", "--endpoint",
                        f"127.0.0.1:{server.port}")
    assert code == 1 and "4 images via brpc; 4 differ from local prediction" in out
    assert out.count("  mismatch: img/") == 4
