"""`python -m refinery.cli`: the `refinery` command."""

import sys

from refinery.cli import main

sys.exit(main())
