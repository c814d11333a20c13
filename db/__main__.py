"""`python -m db ...` is `selfinstruct db ...` (`python -m db export ...` is `selfinstruct export ...`)."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "export":
    from db.export import main as export_main

    sys.exit(export_main(sys.argv[2:]))

from db.cli import main

sys.exit(main())
