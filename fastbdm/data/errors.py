"""The one exception every dataset problem raises."""


class DatasetError(ValueError):
    """A dataset cannot be found, read or used; the message says what is wrong and what to do (one line)."""
