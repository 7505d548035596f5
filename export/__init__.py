"""Model zoo and exporter: PaddleClas networks -> Paddle Serving's serving_server/serving_client layout."""

from pathlib import Path

# The bundled photos (package data): they calibrate random weights, and the benches send one as their request.
SAMPLE_IMAGES = Path(__file__).parent / "data" / "images"
