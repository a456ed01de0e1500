"""``python -m bench`` is the ``curvbench`` CLI."""

import sys

from bench.cli import main

sys.exit(main())
