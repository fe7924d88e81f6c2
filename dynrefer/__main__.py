"""``python -m dynrefer`` is the ``dynrefer`` command."""

import sys

from .cli import main

sys.exit(main())
