"""Errors a user can act on. The CLI turns each into one line and exit code 1."""


class ZooWarning(UserWarning):
    """Something a user may want to change, though zoo can go on (the CLI prints one line)."""


class ZooError(Exception):
    """Base of every error zoo reports to a user. The message is the whole report."""


class InputError(ZooError):
    """A source model, file or argument that zoo cannot read as given."""


class FormatError(ZooError):
    """An archive that is damaged, truncated or not a zoo archive."""


class UnreadableError(FormatError):
    """A path zoo cannot read as an archive at all: missing, a folder, a file it may not open or
    that is not a zoo archive, or one of a format version or with features this zoo does not read.
    Nothing says an archive is damaged: `zoo verify` says it as an error, where it reports damage."""


class MissingObjectError(FormatError):
    """An object an archive of a zoo reads from is not there (removed, lost, or the archive copied
    out of its zoo)."""


class ChecksumError(FormatError):
    """Stored bytes do not match their checksum: the archive is damaged."""


class PipelineError(ZooError):
    """A pipeline spec that names an unknown codec or gives it bad parameters."""


class OutOfReach(PipelineError):
    """A target_ratio of l2 the model cannot reach: the tensors l2 leaves alone and the header take
    nearly all of it. `reachable` is the highest target_ratio that can be, None when none can."""

    def __init__(self, message: str, reachable: float | None) -> None:
        super().__init__(message)
        self.reachable = reachable


class OutputExistsError(ZooError):
    """An output path exists and --force was not given."""


class StorageError(ZooError):
    """The zoo's storage cannot be reached, read or written (credentials, network, permissions):
    no damage, and never said as damage (zoo.hub.remote raises it; readers pass it on)."""
