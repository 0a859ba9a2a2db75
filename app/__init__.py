"""tunedeck's web process: the dashboard, the REST API and the services behind them.

It never imports torch: training lives in `worker/`, what crosses to it in `tunedeck_jobs/`.
"""
