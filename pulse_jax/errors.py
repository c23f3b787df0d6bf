"""One exception type for the user's mistakes; programming errors stay tracebacks."""


class PulseJaxError(Exception):
    """Bad input from the user (a file, a flag, an image): the message says what and what to do.

    The command line prints the message alone and exits non-zero.
    """


class CheckpointError(PulseJaxError):
    """A checkpoint or model directory that cannot be used as it is."""
