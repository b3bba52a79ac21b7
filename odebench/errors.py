"""User-facing errors: the CLI prints them as one line and exits nonzero, never a traceback."""


class OdebenchError(Exception):
    """Bad input or an unusable file; the message is the whole explanation."""
