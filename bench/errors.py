"""The one error type for bad user input: the CLI prints its message as one line and exits 2."""


class UsageError(ValueError):
    """Bad input from the user (unknown name, bad value, missing data, unwritable folder).

    The message is a single line naming the bad value and what is allowed.
    """
