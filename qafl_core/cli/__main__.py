"""``python -m qafl_core.cli ...`` is the ``qafl`` command."""
import sys

from qafl_core.cli import main

sys.exit(main())
