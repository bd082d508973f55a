"""``python -m vista.cli ARGS`` is ``vista ARGS``."""
import sys

from . import main

sys.exit(main())
