"""Errors a user can cause. The CLI prints their message as one sentence and exits non-zero."""


class BenchError(Exception):
    """A problem with the user's input or environment, stated so that they can fix it."""

    exit_code = 2


class IncompleteRunError(BenchError):
    """The run finished but some turns failed; the summary says which."""

    exit_code = 1
