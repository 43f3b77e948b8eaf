"""``python -m anl.integrations.mtard``: the ``anl-mtard`` command (:mod:`.cli`)."""

import sys

from anl.integrations.mtard.cli import main

sys.exit(main())
