"""``python -m vista.cli ARGS`` is ``vista ARGS``."""
import sys

from .app import main

sys.exit(main())
