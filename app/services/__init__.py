"""Business logic between the web layer and the database. Plain functions taking a Session."""
