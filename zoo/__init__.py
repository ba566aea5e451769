"""zoo: a model zoo and checkpoint compressor.

The names below load on first use, so that `zoo --help` does not pay for numpy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress": ("api", "compress"),
    "decompress": ("api", "decompress"),
    "open": ("api", "open_archive"),  # zoo.open, after safetensors' safe_open
    "load_state_dict": ("api", "load_state_dict"),
    "verify": ("api", "verify"),
    "report_of": ("api", "report_of"),
    "Report": ("api", "Report"),
    "ZooError": ("errors", "ZooError"),
}
# zoo.open is called as such: a star import would put it in the place of the built-in open()
__all__ = [*(name for name in _EXPORTS if name != "open"), "__version__"]


def __dir__() -> list[str]:  # help(zoo) and completion see the names that load on first use
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    from importlib import import_module

    module, attribute = _EXPORTS[name]
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value
