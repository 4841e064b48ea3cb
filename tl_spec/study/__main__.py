"""``python -m tl_spec.study study plan|run|collect FILE`` (the same as ``tl-spec study ...``)."""

import sys

from tl_spec.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
