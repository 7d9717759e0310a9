"""``python -m flask_tokenguard.serving.winservice COMMAND``: see :mod:`.cli`."""

from __future__ import annotations

import sys

from flask_tokenguard.serving.winservice.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
