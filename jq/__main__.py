"""``python -m jq``: see :mod:`jq.cli`."""

import sys

from jq.cli import main

sys.exit(main())
