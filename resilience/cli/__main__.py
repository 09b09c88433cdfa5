"""`python -m resilience.cli ...`, as the `resilience` command."""

import sys

from resilience.cli import main

sys.exit(main())
