"""Writes tiny random-weight folders laid out exactly as the released weights are, for tests and for trying a
real-model campaign end to end on a CPU: python -m noisesearch_server.torchmodels.tiny NAME DIR [--seed N]."""

from __future__ import annotations

import argparse
import sys

from ..backend import ConfigError
from .registry import MODELS, VERIFIERS, save_tiny


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisesearch_server.torchmodels.tiny", description=__doc__)
    parser.add_argument("name", help=f"one of {', '.join([*MODELS, *VERIFIERS])}")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        save_tiny(args.name, args.folder, seed=args.seed)
    except ConfigError as error:
        print(f"tiny: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
