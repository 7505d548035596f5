"""Command-line options every client shares: the CA to trust for TLS, and the token."""

import argparse
import os

TOKEN_ENV = "SERVING_TOKEN"  # --token's default, so the secret need not be on the command line


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """--ca and --token, the same in every client."""
    parser.add_argument("--ca", help="CA or self-signed certificate (PEM): connect with TLS and trust it")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"token (default: ${TOKEN_ENV})")
