"""`python -m serving.migrate`: a script in Paddle Serving's examples' style comes out importable on the kit."""

import subprocess
import sys
from pathlib import Path

from serving.migrate import migrate_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = '''import base64
import numpy as np
import cv2
from paddle_serving_server.web_service import WebService, Op
from paddle_serving_app.reader import Sequential, URL2Image, Resize, CenterCrop, RGB2BGR, Transpose, Div, Normalize, \\
    Base64ToImage


class ImagenetOp(Op):
    def init_op(self):
        self.seq = Sequential([Resize(256), CenterCrop(224), RGB2BGR(), Transpose((2, 0, 1)), Div(255),
                               Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True)])

    def preprocess(self, input_dicts, data_id, log_id):
        (_, input_dict), = input_dicts.items()
        data = base64.b64decode(input_dict["image"].encode('utf8'))
        data = np.fromstring(data, np.uint8)
        text = np.fromstring("1 2", dtype=int, sep=" ")
        im = cv2.imdecode(data, cv2.IMREAD_COLOR)
        return {"image": self.seq(im)[np.newaxis, :]}, False, None, ""
'''


def test_imports_and_binary_fromstring_are_rewritten_and_the_rest_is_reported() -> None:
    source = EXAMPLE + "from paddle_serving_app.reader import OCRReader\nimport paddle_serving_client.utils\n"
    migration = migrate_text(source, "web_service.py")
    assert "from serving.pipeline import WebService, Op\n" in migration.text
    assert ("from serving.reader import Sequential, URL2Image, Resize, CenterCrop, RGB2BGR, Transpose, Div, "
            "Normalize, Base64ToImage\n") in migration.text
    assert "data = np.frombuffer(data, np.uint8)" in migration.text
    assert 'np.fromstring("1 2", dtype=int, sep=" ")' in migration.text  # text mode still exists
    assert "from paddle_serving_app.reader import OCRReader" in migration.text
    assert migration.unmapped == [
        "web_service.py:21: paddle_serving_app.reader: no kit equivalent for OCRReader",
        "web_service.py:22: `import paddle_serving_client.utils`: import the names you use from the kit's modules "
        "instead (serving.pipeline, serving.reader, clients)"]


def test_pipeline_client_maps_to_the_kit_s_client() -> None:
    migration = migrate_text("from paddle_serving_server.pipeline import PipelineClient\n"
                             "from paddle_serving_client import Client as BrpcClient\n")
    assert migration.text == ("from clients import PipelineClient\n"
                              "from clients.brpc_client import Client as BrpcClient\n") and not migration.unmapped


def test_the_command_prints_a_diff_writes_only_when_asked_and_the_result_imports(tmp_path: Path) -> None:
    script = tmp_path / "web_service.py"
    script.write_text(EXAMPLE)
    command = [sys.executable, "-m", "serving.migrate", str(script)]
    dry = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-from paddle_serving_server.web_service import WebService, Op" in dry.stdout
    assert "+from serving.pipeline import WebService, Op" in dry.stdout and script.read_text() == EXAMPLE
    wrote = subprocess.run([*command, "--write"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert wrote.returncode == 0 and (tmp_path / "web_service.py.bak").read_text() == EXAMPLE
    check = ("import runpy, numpy as np, base64, cv2\n"
             f"module = runpy.run_path({str(script)!r})\n"
             "op = module['ImagenetOp'](name='imagenet')\n"
             "op.init_op()\n"
             f"image = base64.b64encode(open({str(sorted((ROOT / 'export/data/images').glob('*'))[0])!r}, 'rb')"
             ".read()).decode()\n"
             "feed, skip, code, info = op.preprocess({'read': {'image': image}}, 0, 0)\n"
             "print(feed['image'].shape)\n")
    ran = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "(1, 3, 224, 224)"


def test_a_star_import_maps_to_the_kit_module() -> None:
    migration = migrate_text("from paddle_serving_app.reader import *\n")
    assert migration.text == "from serving.reader import *\n" and not migration.unmapped
