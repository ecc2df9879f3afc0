"""``python -m llmcal …``: the command line, also under ``torchrun -m llmcal`` / ``accelerate launch -m llmcal``."""

import sys

from llmcal.cli import main

sys.exit(main())
