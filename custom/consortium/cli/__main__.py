"""`python -m consortium.cli`: the same command as the `consortium` entry point (used by workers and tests)."""

import sys

from consortium.cli import main

sys.exit(main())
