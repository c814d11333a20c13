"""`python -m executor ...` is `selfinstruct sandbox ...`."""

import sys

from executor.cli import main

sys.exit(main())
