"""``python -m qafl_core ...`` is the ``qafl`` command (useful where the console script is not on PATH)."""
import sys

from qafl_core.cli import main

sys.exit(main())
