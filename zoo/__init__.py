"""zoo: a model zoo and checkpoint compressor."""

__version__ = "0.1.0"

from .api import Report, compress, decompress, report_of, verify  # noqa: E402
from .api import open_archive as open  # noqa: E402  (zoo.open, after safetensors' safe_open)
from .errors import ZooError  # noqa: E402

__all__ = ["Report", "ZooError", "compress", "decompress", "open", "report_of", "verify", "__version__"]
