"""Errors fedrs raises for input it cannot use.

``InputError`` is a ``ValueError`` so callers that only know the standard library still catch it;
its message always names the file or parameter, the offending value and what was expected.
"""


class InputError(ValueError):
    """Bad input data or an impossible request, detected before anything is written."""
