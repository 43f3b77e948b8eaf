"""``python -m anl.integrations.mtard.cli``: the ``anl-mtard`` command."""

import sys

from .app import main

sys.exit(main())
