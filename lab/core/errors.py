"""The one base class of every error a user can fix: the message names the problem and the fix."""


class LabError(Exception):
    """A problem with the user's input, files or plan; `python -m lab` prints it without a traceback."""
