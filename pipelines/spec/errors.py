"""The user-error type: input the user can fix, shown by the command line as one line with exit status 2.

A leaf module: every layer may raise it, and nothing here imports another part of ganpipe.
"""

from __future__ import annotations


class UserError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
