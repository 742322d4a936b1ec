"""User-facing errors.

A `UserError` is something the user can fix (a missing file, a bad column, an existing output
directory). The CLI prints its message as one line on stderr and exits with status 2, with no
traceback. Messages name files, columns and row counts, never patient values.
"""


class UserError(Exception):
    """Bad input or a refused operation; the message is shown to the user as is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C (the CLI exits 143)."""
