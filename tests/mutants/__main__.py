"""`python -m tests.mutants`: see tests/mutants/run.py."""

import sys

from tests.mutants.run import main

sys.exit(main())
