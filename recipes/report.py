"""Table and plot of a recipe sweep:

    python recipes/report.py multirun/mlp_prune/<date>     # writes report.md and report.png there
"""

import sys

from smoothprune.recipes.report import main

if __name__ == "__main__":
    sys.exit(main())
