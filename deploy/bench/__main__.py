"""The bare-Faust counter process: ``python -m chaincast.deploy.bench --count N --out FILE``."""

from __future__ import annotations

import sys
from pathlib import Path

from chaincast.deploy.bench.harness import count_messages
from chaincast.models.logs import setup_logging
from chaincast.stream.settings import load_settings


def main() -> None:
    if len(sys.argv) != 5 or sys.argv[1] != "--count" or sys.argv[3] != "--out":
        sys.exit("usage: python -m chaincast.deploy.bench --count N --out FILE (started by `chaincast bench`)")
    setup_logging()
    count_messages(load_settings(), int(sys.argv[2]), Path(sys.argv[4]))


if __name__ == "__main__":
    main()
