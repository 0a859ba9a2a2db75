"""The `tunedeck` command: serves the dashboard, starts workers, submits sweeps. The one place that knows both
app/ and worker/."""
