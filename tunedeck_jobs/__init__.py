"""The seam between the dashboard (app/) and the workers (worker/): the Celery app, queue and task names, placement,
sending after the commit, and request/reply calls to service workers. Imports neither torch nor the web."""
