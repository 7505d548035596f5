"""Paddle Serving's PaddleClas example scripts, as their users run them, on a real export over HTTP and gRPC.

The service and clients below are written the way Paddle Serving 0.9's `examples/Pipeline/PaddleClas/*`
files are: Paddle Serving's imports, the reader `Sequential`, `np.fromstring`, `imagenet.label`, the examples'
postprocess, `requests` and `PipelineClient` clients, a `MultiThreadRunner` benchmark. They run through
`python -m serving.compat` unchanged, and with plain Python after `python -m serving.migrate --write`; both
answer what the kit's own preprocessing and the exported model give in process (within 1e-5).
"""

import ast
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from serving.compat import PaddleServingNames, fromstring_lines, paddle_serving_names
from tests.conftest import IMAGES, free_port
from tests.test_web_service import expected

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

CONFIG = """\
#worker_num, 最大并发数。当build_dag_each_worker=True时, 框架会创建worker_num个进程
worker_num: 1

#http端口, rpc_port和http_port不允许同时为空
http_port: {http_port}
rpc_port: {rpc_port}

dag:
    #op资源类型, True, 为线程模型；False，为进程模型
    is_thread_op: False
op:
    imagenet:
        #并发数，is_thread_op=True时，为线程并发；否则为进程并发
        concurrency: 1

        #当op配置没有server_endpoints时，从local_service_conf读取本地服务配置
        local_service_conf:

            #uci模型路径
            model_config: SqueezeNet1_1/serving_server/

            #计算硬件类型: 空缺时由devices决定(CPU/GPU)，0=cpu, 1=gpu, 2=tensorRT
            device_type: 0

            #计算硬件ID，当devices为""或不写时为CPU预测
            devices: ""

            #client类型，包括brpc, grpc和local_predictor.local_predictor不启动Serving服务，进程内预测
            client_type: local_predictor

            #Fetch结果列表，以client_config中fetch_var的alias_name为准
            fetch_list: ["prediction"]
"""

# The examples' first import, one line as they have it.
READER_IMPORT = ("from paddle_serving_app.reader import Sequential, URL2Image, Resize, CenterCrop, RGB2BGR, Transpose, "
                 "Div, Normalize, Base64ToImage")
SERVICE = "import sys\n" + READER_IMPORT + """
from paddle_serving_server.web_service import WebService, Op
import logging
import numpy as np
import base64, cv2


class ImagenetOp(Op):
    def init_op(self):
        self.seq = Sequential([
            Resize(256), CenterCrop(224), RGB2BGR(), Transpose((2, 0, 1)),
            Div(255), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                True)
        ])
        self.label_dict = {}
        label_idx = 0
        with open("imagenet.label") as fin:
            for line in fin:
                self.label_dict[label_idx] = line.strip()
                label_idx += 1

    def preprocess(self, input_dicts, data_id, log_id):
        (_, input_dict), = input_dicts.items()
        batch_size = len(input_dict.keys())
        imgs = []
        for key in input_dict.keys():
            data = base64.b64decode(input_dict[key].encode('utf8'))
            data = np.fromstring(data, np.uint8)
            im = cv2.imdecode(data, cv2.IMREAD_COLOR)
            img = self.seq(im)
            imgs.append(img[np.newaxis, :].copy())
        input_imgs = np.concatenate(imgs, axis=0)
        return {"image": input_imgs}, False, None, ""

    def postprocess(self, input_dicts, fetch_dict, data_id, log_id):
        score_list = fetch_dict["prediction"]
        result = {"label": [], "prob": []}
        for score in score_list:
            score = score.tolist()
            max_score = max(score)
            result["label"].append(self.label_dict[score.index(max_score)]
                                   .strip().replace(",", ""))
            result["prob"].append(max_score)
        result["label"] = str(result["label"])
        result["prob"] = str(result["prob"])
        return result, None, ""


class ImageService(WebService):
    def get_pipeline_response(self, read_op):
        image_op = ImagenetOp(name="imagenet", input_ops=[read_op])
        return image_op


uci_service = ImageService(name="imagenet")
uci_service.prepare_pipeline_config("config.yml")
uci_service.run_service()
"""
FROMSTRING_LINE = SERVICE.splitlines().index("            data = np.fromstring(data, np.uint8)") + 1

HTTP_CLIENT = """\
import numpy as np
import requests
import json
import cv2
import base64
import os


def cv2_to_base64(image):
    return base64.b64encode(image).decode('utf8')


if __name__ == "__main__":
    url = "http://127.0.0.1:{http_port}/imagenet/prediction"
    with open(os.path.join(".", "daisy.jpg"), 'rb') as file:
        image_data1 = file.read()
    image = cv2_to_base64(image_data1)
    data = {{"key": ["image"], "value": [image]}}
    for i in range(1):
        r = requests.post(url=url, data=json.dumps(data))
        print(r.json())
"""

RPC_CLIENT = """\
from paddle_serving_server.pipeline import PipelineClient
import numpy as np
import requests
import json
import cv2
import base64
import os

client = PipelineClient()
client.connect(['127.0.0.1:{rpc_port}'])


def cv2_to_base64(image):
    return base64.b64encode(image).decode('utf8')


with open("daisy.jpg", 'rb') as file:
    image_data = file.read()
image = cv2_to_base64(image_data)

for i in range(1):
    ret = client.predict(feed_dict={{"image": image}}, fetch=["label", "prob"])
    print(ret)
"""

BENCHMARK = """\
import sys
import os
import base64
import requests
import time
import json

from paddle_serving_server.pipeline import PipelineClient
import numpy as np
from paddle_serving_client.utils import MultiThreadRunner
from paddle_serving_client.utils import benchmark_args, show_latency


def cv2_to_base64(image):
    return base64.b64encode(image).decode('utf8')


def run_http(idx, batch_size):
    url = "http://127.0.0.1:{http_port}/imagenet/prediction"
    start = time.time()
    with open(os.path.join(".", "daisy.jpg"), 'rb') as file:
        image_data1 = file.read()
    image = cv2_to_base64(image_data1)
    keys, values = [], []
    for i in range(batch_size):
        keys.append("image_{{}}".format(i))
        values.append(image)
    data = {{"key": keys, "value": values}}
    latency_list = []
    total_num = 0
    errors = 0
    for _ in range(3):
        l_start = time.time()
        r = requests.post(url=url, data=json.dumps(data))
        errors += r.json()["err_no"] != 0
        l_end = time.time()
        latency_list.append(l_end * 1000 - l_start * 1000)
        total_num += 1
    end = time.time()
    return [[end - start], latency_list, [total_num], [errors]]


if __name__ == "__main__":
    args = benchmark_args()
    result = MultiThreadRunner().run(run_http, args.thread, args.batch_size)
    print("Total count: {{}}. ".format(sum(result[2])))
    print("Errors: {{}}".format(sum(result[3])))
    show_latency(result[1])
"""


@pytest.fixture(scope="module")
def workdir(squeezenet_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An example's folder: config.yml with a relative model_config, imagenet.label, daisy.jpg and the scripts."""
    folder = tmp_path_factory.mktemp("paddleclas_example")
    (folder / "SqueezeNet1_1").symlink_to(squeezenet_root, target_is_directory=True)
    names = [line.split(" ", 1)[1] for line in (squeezenet_root / "labels.txt").read_text().splitlines()]
    (folder / "imagenet.label").write_text("\n".join(names) + "\n")
    (folder / "daisy.jpg").write_bytes((IMAGES / "daisy.jpg").read_bytes())
    return folder


def write_example(folder: Path, service: str) -> dict[str, int]:
    """The service and its clients on fresh ports; returns the ports."""
    ports = {"http_port": free_port(), "rpc_port": free_port()}
    (folder / "config.yml").write_text(CONFIG.format(**ports), encoding="utf-8")
    (folder / "resnet50_web_service.py").write_text(service)
    for name, text in (("pipeline_http_client.py", HTTP_CLIENT), ("pipeline_rpc_client.py", RPC_CLIENT),
                       ("benchmark.py", BENCHMARK)):
        (folder / name).write_text(text.format(**ports))
    return ports


@pytest.fixture
def serve(workdir: Path) -> Iterator:
    """Start `command` in the example folder; wait for /ready; stop it (SIGTERM, clean exit) afterwards."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], http_port: int) -> subprocess.Popen:
        log = (workdir / "service.log").open("w")
        process = subprocess.Popen(command, cwd=workdir, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
        started.append(process)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, (workdir / "service.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return process
            except OSError:
                time.sleep(0.2)
        raise TimeoutError((workdir / "service.log").read_text()[-3000:])

    yield start
    for process in started:
        process.terminate()
        assert process.wait(timeout=30) == 0, (workdir / "service.log").read_text()[-3000:]


def run_script(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """A client script, run to completion in the example folder."""
    done = subprocess.run([sys.executable, *command], cwd=folder, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_matches_in_process(model_dir: Path, labels_text: str, probs_text: str) -> None:
    """The examples' str(list) answers against the export run in process on the kit's own preprocessing."""
    labels, probs = expected(model_dir, [(IMAGES / "daisy.jpg").read_bytes()])
    assert ast.literal_eval(labels_text) == labels
    np.testing.assert_allclose(ast.literal_eval(probs_text), probs, rtol=0, atol=1e-5)


def rpc_answer(stdout: str) -> tuple[int, dict[str, str]]:
    """err_no and key -> value from the printed pipeline Response (text format)."""
    fields: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(": ")
        fields.setdefault(name.strip(), []).append(ast.literal_eval(value) if value.startswith('"') else value)
    return int(fields.get("err_no", ["0"])[0]), dict(zip(fields.get("key", []), fields.get("value", []), strict=True))


def test_the_hook_maps_paddle_serving_names_only_inside_the_runner() -> None:
    with paddle_serving_names():
        from paddle_serving_app.reader import Normalize, Sequential
        from paddle_serving_client import Client
        from paddle_serving_client.utils import MultiThreadRunner
        from paddle_serving_server.pipeline import PipelineClient
        from paddle_serving_server.web_service import Op, WebService

        assert (Sequential.__module__, Normalize.__module__) == ("serving.reader", "serving.reader")
        assert (WebService.__module__, Op.__module__) == ("serving.pipeline.web_service", "serving.pipeline.op")
        assert PipelineClient.__module__ == "clients.pipeline_client"
        assert Client.__module__ == "serving.protocols.brpc_model_client"
        assert MultiThreadRunner.__module__ == "clients.benchmark"
        with pytest.raises(ImportError, match="OCRReader"):
            from paddle_serving_app.reader import OCRReader  # noqa: F401
    assert not any(isinstance(finder, PaddleServingNames) for finder in sys.meta_path)
    assert not any(name.startswith("paddle_serving") for name in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        import paddle_serving_server  # noqa: F401


def test_the_examples_run_through_the_runner_unchanged(workdir: Path, squeezenet_root: Path, serve) -> None:
    """Only the decode line differs from the examples (NumPy 2 refuses binary fromstring, tested below)."""
    ports = write_example(workdir, SERVICE.replace("np.fromstring(data", "np.frombuffer(data"))
    serve([sys.executable, "-m", "serving.compat", "resnet50_web_service.py"], ports["http_port"])
    model_dir = squeezenet_root / "serving_server"

    http = run_script(workdir, "-m", "serving.compat", "pipeline_http_client.py")
    answer = ast.literal_eval(http.stdout.strip())
    assert answer["err_no"] == 0, answer
    assert_matches_in_process(model_dir, *dict(zip(answer["key"], answer["value"], strict=True)).values())

    err_no, values = rpc_answer(run_script(workdir, "-m", "serving.compat", "pipeline_rpc_client.py").stdout)
    assert err_no == 0 and list(values) == ["label", "prob"], values
    assert_matches_in_process(model_dir, values["label"], values["prob"])

    bench = run_script(workdir, "-m", "serving.compat", "benchmark.py", "--thread", "2", "--batch_size", "2")
    assert "Total count: 6. " in bench.stdout and "Errors: 0" in bench.stdout, bench.stdout
    assert [line.split(":")[0] for line in bench.stderr.splitlines()[-6:]] == [
        "latency", "mean", "median", "80 percent", "90 percent", "99 percent"]


def test_binary_fromstring_is_named_by_line_then_migrate_makes_plain_python_work(
        workdir: Path, squeezenet_root: Path, serve) -> None:
    ports = write_example(workdir, SERVICE)
    assert fromstring_lines(SERVICE) == [FROMSTRING_LINE]
    process = serve([sys.executable, "-m", "serving.compat", "resnet50_web_service.py"], ports["http_port"])
    body = json.dumps({"key": ["image"], "value": [base64.b64encode(b"hello").decode()]})
    for _ in range(2):  # the failure is an answer, and the service keeps serving
        answer = requests.post(f"http://127.0.0.1:{ports['http_port']}/imagenet/prediction", data=body,
                               timeout=30).json()
        assert answer["err_no"] != 0 and f"resnet50_web_service.py:{FROMSTRING_LINE}" in answer["err_msg"], answer
        assert "python -m serving.migrate resnet50_web_service.py --write" in answer["err_msg"]
    process.terminate()
    assert process.wait(timeout=30) == 0
    log = (workdir / "service.log").read_text()
    assert (f"resnet50_web_service.py:{FROMSTRING_LINE}: binary np.fromstring fails on NumPy 2; "
            "`python -m serving.migrate resnet50_web_service.py --write` rewrites it") in log

    scripts = ["resnet50_web_service.py", "pipeline_http_client.py", "pipeline_rpc_client.py", "benchmark.py"]
    migrated = subprocess.run([sys.executable, "-m", "serving.migrate", *scripts, "--write"], cwd=workdir, env=ENV,
                              capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    assert "+            data = np.frombuffer(data, np.uint8)" in migrated.stdout
    assert "+from clients.benchmark import MultiThreadRunner" in migrated.stdout
    assert not any("paddle_serving" in (workdir / name).read_text() for name in scripts)

    serve([sys.executable, "resnet50_web_service.py"], ports["http_port"])
    model_dir = squeezenet_root / "serving_server"
    answer = ast.literal_eval(run_script(workdir, "pipeline_http_client.py").stdout.strip())
    assert answer["err_no"] == 0, answer
    assert_matches_in_process(model_dir, *dict(zip(answer["key"], answer["value"], strict=True)).values())
    err_no, values = rpc_answer(run_script(workdir, "pipeline_rpc_client.py").stdout)
    assert err_no == 0, values
    assert_matches_in_process(model_dir, values["label"], values["prob"])
    bench = run_script(workdir, "benchmark.py", "--thread", "2", "--batch_size", "1")
    assert "Total count: 6. " in bench.stdout and "Errors: 0" in bench.stdout, bench.stdout


def test_an_unmapped_import_fails_with_its_line(tmp_path: Path) -> None:
    script = tmp_path / "ocr_web_service.py"
    script.write_text("import numpy\nfrom paddle_serving_app.reader import OCRReader\n")
    done = subprocess.run([sys.executable, "-m", "serving.compat", str(script)], env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert f"{script}:2: cannot import name 'OCRReader' from 'paddle_serving_app.reader'" in done.stderr
    assert "python -m serving.migrate" in done.stderr
