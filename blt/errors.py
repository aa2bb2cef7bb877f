"""The error every checkpoint reader raises, in a module of its own.

The layout readers (``blt.original``, ``blt.hub``) sit below ``blt.checkpoint``, which calls them; keeping
the error here lets them raise it without importing ``blt.checkpoint`` back.
"""


class CheckpointError(ValueError):
    """A checkpoint that is missing, of the wrong kind, or does not fit its model."""
