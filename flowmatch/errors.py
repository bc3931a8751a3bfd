"""The one exception type for problems with what a user gave us.

Every entry point (CLI flags, data files, configs, checkpoints, API arguments) raises
:class:`FlowmatchError` with a message that names the problem. The CLI prints that message
on one line to stderr and exits with status 2; Python callers can catch it (it is a
``ValueError``).
"""


class FlowmatchError(ValueError):
    """Bad input from the user: a file, a flag, a config value or a checkpoint."""
