"""The error of a configuration that cannot work (the CLI prints it as one line, exit code 2)."""


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and how to fix it."""
