"""The project's one exception type.

Everything a user can cause (a bad profile, a missing file, an unknown domain) raises
`KdtuiError` with a message that names what is wrong. The CLI turns it into one line on stderr
and exit code 2; anything else is an internal error (exit code 1).
"""


class KdtuiError(Exception):
    """A problem with the user's input or environment, explained in the message."""

    exit_code = 2
