"""The test and benchmark harness: a real stack (database, broker, Celery workers, web server) started in processes.
Not installed with the package."""
