"""One measurement in a fresh process, because engines' thread pools distort each other in one process.

    python -m bench.worker '<spec JSON>' OUT.json

Spec `task` is `engine` (time LocalPredictor.predict on random input per batch size, as `python -m export
--measure` does) or `ceiling` (decode + preprocess + predict of one JPEG from concurrent threads, no serving).
Raw samples go to OUT.json; the parent computes the statistics.
"""

import json
import sys
import threading
import time
import warnings
from pathlib import Path

from export.measure import build_predictor, time_engine

warnings.filterwarnings("ignore", message="No ccache found")


def _drive(predictor: object, transforms: object, image: bytes, workers: int, seconds: float) -> tuple[list, float]:
    """`workers` threads loop decode+preprocess then predict until the deadline: ([(pre, predict, total) s], wall)."""
    feed = predictor.feed_names[0]
    samples: list[tuple[float, float, float]] = []
    started = time.perf_counter()
    deadline = started + seconds

    def loop() -> None:
        own = []
        while (t0 := time.perf_counter()) < deadline:
            batch = transforms.batch([image])  # straight into the batch row, as the servers do
            t1 = time.perf_counter()
            predictor.predict({feed: batch})
            t2 = time.perf_counter()
            own.append((t1 - t0, t2 - t1, t2 - t0))
        samples.extend(own)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


def run_ceiling(spec: dict) -> dict:
    """The serving stack's upper bound: the servers' thread budget, no network, no (de)serialisation."""
    from serving.model_card import load_card

    predictor = build_predictor(spec["server_dir"], spec["conf"], pool_size=spec["workers"])
    transforms = load_card(spec["server_dir"]).transforms
    image = Path(spec["image"]).read_bytes()
    _drive(predictor, transforms, image, spec["workers"], spec["warmup_s"])
    samples, wall_s = _drive(predictor, transforms, image, spec["workers"], spec["seconds"])
    columns = list(zip(*samples, strict=True)) if samples else [(), (), ()]
    return {"wall_s": wall_s, "count": len(samples),
            **{f"{name}_ms": [value * 1000 for value in column]
               for name, column in zip(("preprocess", "predict", "total"), columns, strict=True)}}


TASKS = {"engine": time_engine, "ceiling": run_ceiling}


def main(argv: list[str]) -> int:
    """Run the task named in the spec and write its JSON; any failure is a traceback and a non-zero exit."""
    spec, out = json.loads(argv[0]), Path(argv[1])
    out.write_text(json.dumps(TASKS[spec["task"]](spec)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
