"""Errors of the model registry: refusals (exit 2) and integrity failures (exit 1)."""

from ml_pipeline.errors import JobFailed, UsageError


class RegistryError(UsageError):
    """A refused registry operation: unknown or duplicate model id, forbidden transition, bad argument."""


class IntegrityError(JobFailed):
    """A registry file is corrupt or an artifact does not match its recorded sha256; the message names the file."""


class RegistryUnavailable(JobFailed):
    """The registry's database cannot be reached (down, restarting, connection killed): nothing was changed, and a
    server keeps serving what it has loaded until it comes back."""
