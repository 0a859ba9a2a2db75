class TrainingError(Exception):
    """A failure the user can fix; its message is shown on the run page as it is (no stack trace)."""
