"""Errors the CLI prints as one line: a configuration that cannot work (exit code 2), a run that stopped on
purpose (divergence: 1; a signal: 128 + its number)."""


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and how to fix it."""


class RunStopped(Exception):
    """The run stopped on purpose before its end (the CLI prints the message as one line and exits `exit_code`)."""

    exit_code = 1


class DivergenceError(RunStopped):
    """Non-finite loss, gradients or weights: the run stops before saving them (exit code 1)."""


class SignalStop(RunStopped):
    """SIGTERM or SIGINT asked the run to stop: it saved a resumable checkpoint at a step boundary. Exit code
    128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the shells' convention for death by a signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)
