import sys

from selfinstruct.cli import main

sys.exit(main())
