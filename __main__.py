"""``python -m keyframe_propagation``: see cli/main.py."""

import sys

from .cli import main

sys.exit(main())
