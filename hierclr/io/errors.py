"""The one error type of :mod:`hierclr.data`."""


class DataFormatError(ValueError):
    """A data file is missing, malformed or inconsistent; the message names the file."""
