"""The one exception type for expected failures: bad input, bad bundle, bad configuration.

Its message is a single line meant for the user (the CLI prints it and exits 1; the daemon
publishes it as an error event). Anything else escaping is a bug.
"""


class MedgeError(Exception):
    """An expected failure with a one-line, user-facing message."""


class InputError(MedgeError):
    """An input image or dataset that cannot be used; the message names the file."""


class BundleError(MedgeError):
    """A model bundle that is missing, malformed, tampered with or unsigned."""


class ConfigError(MedgeError):
    """A configuration value that is invalid; the message names the key."""
