"""State both sides write: settings, the database and its models, run transitions, worker records, storage.

Below the seam (tunedeck_jobs) and above the run spec: imports neither the web, nor Celery, nor torch.
"""

__version__ = "0.1.0"
