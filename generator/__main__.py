"""`python -m generator run --config FILE` (the `ray job submit` entrypoint) and `python -m generator report`."""

import sys

from generator.cli import main

sys.exit(main())
