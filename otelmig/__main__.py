"""Entry point: the only place that calls sys.exit."""

import sys

from otelmig.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
