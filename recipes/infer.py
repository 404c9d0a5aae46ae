"""Dense vs sparse inference of a recipe sweep's sparsest exported model:

    python recipes/infer.py multirun/mlp_prune/<date>
"""

import sys

from smoothprune.recipes.infer import main

if __name__ == "__main__":
    sys.exit(main())
