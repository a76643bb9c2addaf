"""Alembic's migration history of the runs database (app/database.py runs it at start-up)."""
