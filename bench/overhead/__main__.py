"""``python -m bench.overhead``: the same as ``curvbench overhead``."""

import sys

from bench.overhead.cli import main

sys.exit(main())
