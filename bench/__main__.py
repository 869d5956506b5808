"""`python -m bench`: the `safbench` command, for a checkout without the console script."""

import sys

from .cli import main

sys.exit(main())
