"""``python -m pdscaler.replay``."""

import sys

from pdscaler.replay.cli import main

sys.exit(main())
