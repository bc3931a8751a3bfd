"""``python -m flowmatch`` runs the CLI."""

import sys

from flowmatch.cli import main

sys.exit(main())
