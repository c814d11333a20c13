"""`python -m finetune ...` (also what `torchrun -m finetune` runs in every process)."""

import sys

from finetune.cli import main

sys.exit(main())
