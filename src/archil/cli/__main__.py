"""``python -m archil.cli``: the ``archil`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
