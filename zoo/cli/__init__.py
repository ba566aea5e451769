"""The `zoo` command. typer lives in this package and nowhere else."""

from __future__ import annotations

import os
import sys
import warnings


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """zoo's warnings as one line on stderr; anyone else's as Python shows them."""
    from ..errors import ZooWarning

    if issubclass(category, ZooWarning) and not os.environ.get("ZOO_DEBUG"):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    from ..errors import ZooError
    from .app import app

    warnings.showwarning = _show_warning
    try:
        app()
    except ZooError as error:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # disk full, permission denied, ...: the system's words, one line
        if os.environ.get("ZOO_DEBUG"):
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # a bug in zoo: still one line, with the way to the traceback
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: unexpected {type(error).__name__}: {error} (a bug in zoo; ZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
