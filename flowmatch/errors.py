"""The one exception type for problems with what a user gave us.

Every entry point (CLI flags, data files, configs, checkpoints, API arguments) raises
:class:`FlowmatchError` with a message that names the problem. The CLI prints that message
on one line to stderr and exits with status 2; Python callers can catch it (it is a
``ValueError``).
"""


class FlowmatchError(ValueError):
    """Bad input from the user: a file, a flag, a config value or a checkpoint."""


class FlowmatchWarning(UserWarning):
    """Something the user should know about what flowmatch did, such as which checkpoint it loaded; the CLI
    prints it as one ``note:`` line on stderr."""
