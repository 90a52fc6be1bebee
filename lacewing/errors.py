"""Errors that the command line reports to the operator as one clear line, with no traceback."""


class UserError(Exception):
    """Something the operator can fix; the message says what happened and what to do next."""
