"""The base of every error a user can fix (bad file, bad key, wrong layout).

The CLI prints these as one clear line (exit status 2) instead of a traceback;
anything else is a bug and keeps its traceback.
"""


class EdgesegError(ValueError):
    """An error caused by input the user controls; the message says what to fix."""


USER_ERRORS: tuple[type[BaseException], ...] = (EdgesegError, FileNotFoundError)
