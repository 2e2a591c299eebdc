"""``python -m jq_autotune``: see :mod:`jq_autotune.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
