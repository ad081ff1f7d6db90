"""Errors raised for bad recipes and bad data.

Every error a user can cause derives from :class:`LTError`, so the CLI can print one clear line
(naming the recipe key or the file) instead of a traceback from deep inside torch.
"""


class LTError(Exception):
    """Base class of the errors a user can cause (as opposed to bugs in the toolbox)."""


class ConfigError(LTError, ValueError):
    """A recipe or a component's parameters are wrong.

    Args:
        message: What is wrong and, where possible, how to fix it.
        key: Dotted recipe key the problem is about (for example ``"loss.gamma"``); prefixed to the
            message so the user knows where to look.
    """

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}" if key else message)


class DataError(LTError, ValueError):
    """Data that cannot be read or that contradicts itself (names the file or the field)."""
