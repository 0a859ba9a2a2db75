class TrainingError(Exception):
    """A failure the user can fix; its message is shown on the run page as it is (no stack trace)."""


def first_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's first line (its type's name when it has no message), cut at `limit` characters: what a run's
    details and log show of a library's error."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:limit]
