"""User-facing errors: the CLIs print these as one line and exit with status 2."""


class WanError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
