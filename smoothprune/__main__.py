"""`python -m smoothprune` is the `smoothprune` command."""

import sys

from smoothprune.cli import main

sys.exit(main())
