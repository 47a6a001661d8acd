"""``python -m keyframe_propagation``: see cli.py."""

import sys

from .cli import main

sys.exit(main())
