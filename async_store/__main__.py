"""``python -m async_store``: the command line without ``flask``/``quart`` (see ``cli``)."""

from __future__ import annotations

import sys

try:
    from .cli import main
except ImportError as exc:  # pragma: no cover - depends on the extra
    sys.exit(f"the command line needs {exc.name}: pip install 'async_store[cli]'")

main(prog_name="python -m async_store")
