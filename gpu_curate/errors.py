"""Errors that the CLI reports as one clear line (no traceback unless --debug)."""


class CurateError(Exception):
    """Bad input or a run that cannot go on; the message names the problem."""


class MetadataError(CurateError, ValueError):
    """A metadata file or list that is not valid MetaCLIP metadata."""
