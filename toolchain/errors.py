"""Expected user errors. One type for the whole project, defined in the torch-free runtime."""

from clip_debias.runtime.errors import ArtifactError, ClipDebiasError, InputError

__all__ = ["ClipDebiasError", "ArtifactError", "InputError"]
