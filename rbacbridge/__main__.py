"""`python -m rbacbridge` and the `rbacbridge` console script.

Kept free of heavy imports so that a Ctrl-C while typer, rich and the commands are still being
imported ends with the same one line and exit code 130 as anywhere else.
"""

import os
import sys


def run() -> None:
    try:
        from rbacbridge.cli import main
    except KeyboardInterrupt:
        from rbacbridge.errors import INTERRUPTED_MESSAGE

        sys.stderr.write(f"error: {INTERRUPTED_MESSAGE}\n")
        sys.stderr.flush()
        os._exit(130)
    main()


if __name__ == "__main__":
    run()
