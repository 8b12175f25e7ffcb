"""Error types shared by the runtime and the toolchain (torch-free). The CLI prints these as one line, exit code 2."""


class ClipDebiasError(Exception):
    """An expected error with a one-line, user-facing message naming the file/field and what was expected."""


class ArtifactError(ClipDebiasError):
    """The artifact directory is invalid: missing/extra files, bad manifest field, hash mismatch, half-written."""


class InputError(ClipDebiasError):
    """A call got bad input: wrong shape or dtype, NaN/Inf, unreadable image."""
