"""The error for bad input."""


class FormatError(ValueError):
    """Bad input: the message is one line naming the file and, where there is one, the record."""
