"""`python -m services.fake_provider [--port 8090] [--no-auth] ...`"""

from __future__ import annotations

import argparse
import sys

from services.fake_provider.cli import add_arguments, main
from shared.logging import configure_logging


def run() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.fake_provider",
        description=(
            "A fake LLM provider speaking the OpenAI, Together, Anthropic and Gemini wire "
            "formats, for demos, tests and benchmarks."
        ),
    )
    add_arguments(parser)
    configure_logging(service="fake_provider")
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(run())
