"""The one exception type for mistakes a user can make and fix (config, data, checkpoints)."""


class ConfigError(ValueError):
    """A user-fixable problem: the message names what is wrong and how to fix it.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """
