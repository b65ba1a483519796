"""``python -m pdscaler``: the command line."""

import sys

from pdscaler.cli import main

sys.exit(main())
