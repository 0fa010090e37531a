"""The one exception type for mistakes a user can make and fix (config, data, checkpoints)."""


class ConfigError(ValueError):
    """A user-fixable problem: the message names what is wrong and how to fix it.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """


class DataError(ConfigError):
    """Too much of the data is unusable (corrupt images, bad labels, broken shards) to go on training."""
