"""`python -m deeproots ...`: the command line (torchrun starts its ranks this way: `torchrun ... -m deeproots serve`)."""

import sys

from .cli import main

sys.exit(main())
