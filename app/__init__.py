"""tunedeck: the web dashboard, REST API, services and database layer.

The web process never imports torch: training lives in `worker/`, the shared run spec in `runspec/`.
"""

__version__ = "0.1.0"
