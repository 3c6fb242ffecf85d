"""`python -m watcher` is the `import-watcher` command."""

import sys

from watcher.cli import main

sys.exit(main())
