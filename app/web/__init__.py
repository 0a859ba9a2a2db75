"""The FastAPI application: REST API under /api, HTMX pages elsewhere."""
