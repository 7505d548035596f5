"""RESTful client: `python clients/http_client.py IMG [IMG ...] [--url URL] [--ca FILE] [--token TOKEN]`."""

import argparse
import base64
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from clients.options import add_security_options

DEFAULT_URL = "http://127.0.0.1:18080/imagenet/prediction"


def image_request(paths: list[Path], log_id: int = 0) -> dict:
    """Paddle Serving's JSON body: one `image` key, or `image_0`, `image_1`, ... for several images."""
    keys = ["image"] if len(paths) == 1 else [f"image_{i}" for i in range(len(paths))]
    values = [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths]
    return {"key": keys, "value": values, "logid": log_id}


def post(url: str, body: dict, timeout_s: float = 30.0, ca_file: str | None = None, token: str | None = None) -> dict:
    """POST JSON (https:// trusting `ca_file`, `token` as bearer); the JSON answer, also of HTTP errors such as 401."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def main(argv: list[str] | None = None) -> int:
    """Print the service's answer; exit 1 when err_no is not 0."""
    parser = argparse.ArgumentParser(description="Classify images through the pipeline's RESTful API.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    parser.add_argument("--log-id", type=int, default=0, help="log id sent with the request")
    add_security_options(parser)
    args = parser.parse_args(argv)
    try:
        answer = post(args.url, image_request(args.images, args.log_id), ca_file=args.ca, token=args.token)
    except (OSError, urllib.error.URLError) as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    if answer["err_no"] != 0:
        print(f"error {answer['err_no']}: {answer['err_msg']}", file=sys.stderr)
        return 1
    for key, value in zip(answer["key"], answer["value"], strict=True):
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
