"""Errors whose message is complete for the user (no traceback needed).

Both halves raise them: the potential for structures it cannot evaluate, training for bad
data and config files.  The MPI layer prints their message alone, once.
"""


class InputError(ValueError):
    """Bad input from the user; the message names the file, image or key and what is wrong."""


class DataError(InputError):
    """Bad structure data; the message names the file, image and field."""
