"""Graceful shutdown: `stop` (SIGTERM via the pid file) lets the in-flight request finish, then exits 0."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port, wait_ready

ROOT = Path(__file__).parent.parent

SLOW_SERVICE = '''
import sys, time
from pathlib import Path
from serving.pipeline import Op, WebService

class Slow(Op):
    def preprocess(self, input_dicts, data_id=0, log_id=0):
        time.sleep(1.5)
        ((_, data),) = input_dicts.items()
        return data, False, None, ""

class Service(WebService):
    def get_pipeline_response(self, read_op):
        return Slow(name="slow", input_ops=[read_op])

service = Service(name="slow")
service.prepare_pipeline_config(yml_dict={"http_port": int(sys.argv[1]), "limits": {"drain_timeout_ms": 10000}})
service.run_service(pid_file=Path(sys.argv[2]))
'''



def test_stop_drains_the_in_flight_request_and_exits_zero(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "service.pid"
    (tmp_path / "slow_service.py").write_text(SLOW_SERVICE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "slow_service.py", str(port), str(pid_file)], cwd=tmp_path, env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.1)
        assert int(pid_file.read_text()) == process.pid
        wait_ready(f"http://127.0.0.1:{port}/ready", process, 60)
        answers: list[dict] = []
        body = json.dumps({"key": ["a"], "value": ["still answered"]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/slow/prediction", data=body, method="POST")
        client = threading.Thread(target=lambda: answers.append(json.loads(urllib.request.urlopen(request,
                                                                                                  timeout=30).read())))
        client.start()
        time.sleep(0.5)
        stop = subprocess.run([sys.executable, "pipelines/web_service.py", "stop", "--pid_file", str(pid_file)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        client.join(timeout=30)
        assert stop.returncode == 0 and stop.stdout.strip() == f"stopped service {process.pid}", stop.stderr
        assert answers == [{"err_no": 0, "err_msg": "", "key": ["a"], "value": ["still answered"], "tensors": []}]
        assert process.wait(timeout=30) == 0
        assert not pid_file.exists()
    finally:
        if process.poll() is None:
            process.kill()


def test_stop_without_a_running_service(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    missing = subprocess.run([sys.executable, "pipelines/web_service.py", "stop", "--pid_file",
                              str(tmp_path / "none.pid")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no running service" in missing.stderr
    stale = tmp_path / "stale.pid"
    stale.write_text("999999\n")
    gone = subprocess.run([sys.executable, "pipelines/web_service.py", "stop", "--pid_file", str(stale)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0 and "was not running" in gone.stdout and not stale.exists()
