"""`python -m model ...` is `selfinstruct model ...`."""

import sys

from model.cli import main

sys.exit(main())
