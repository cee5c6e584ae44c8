"""The one exception of bad user input, :class:`UserError` (imports nothing, so a module that only
reports bad input does not pull in torch)."""


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2, no traceback
    (:func:`distributed.run_cli`)."""
