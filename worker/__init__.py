"""tunedeck worker: the Celery app, thin tasks, and the training code (which knows nothing of web or DB)."""
