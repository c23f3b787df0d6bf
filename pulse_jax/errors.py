"""One exception type for the user's mistakes; programming errors stay tracebacks."""


class PulseJaxError(Exception):
    """Bad input from the user (a file, a flag, an image): the message says what and what to do.

    The command line prints the message alone and exits non-zero.
    """


class CheckpointError(PulseJaxError):
    """A checkpoint or model directory that cannot be used as it is."""


class DiskFull(PulseJaxError):
    """A write failed for want of space: every later write would too, so a run stops (keeping what it
    finished) rather than fail its inputs one by one."""
