"""The one exception type the command line turns into a plain message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the file, line or field and what was expected."""
