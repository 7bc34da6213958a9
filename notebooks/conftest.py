"""The test suite executes every notebook (nbmake) with the small budgets: the same cells, fewer steps."""

import os

os.environ.setdefault("MINILLAVA_FAST", "1")
