"""Errors that the CLI turns into exit codes: 2 for bad usage or input, 1 for a job that ran and failed."""


class PipelineError(Exception):
    """Base of every error the pipeline reports to a person; the message says what and how to fix.

    `str(error)` speaks to a Python caller (the call to make); `cli_message`, when the fix differs on the
    command line, names the command instead, and is what `ml-pipeline` prints."""

    exit_code = 1

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli or message


class UsageError(PipelineError, ValueError):
    """Bad usage or bad input (a file, a value, a model id): exit code 2."""

    exit_code = 2


class JobFailed(PipelineError):
    """The job ran but did not succeed (quality gate, verification, unreachable service): exit code 1."""

    exit_code = 1


class ConfigError(UsageError):
    """An environment variable holds a value outside its accepted range."""
