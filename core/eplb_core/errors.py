"""The one error type for bad input anywhere in the control plane."""


class InvalidInputError(ValueError):
    """Input that cannot be used as given: wrong shapes, ids out of range, unreadable files.

    The message is one line a user can act on; callers reject the input and change nothing.
    """
