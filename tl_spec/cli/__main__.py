"""``python -m tl_spec.cli ...``: the ``tl-spec`` command."""

import sys

from tl_spec.cli import main

sys.exit(main())
