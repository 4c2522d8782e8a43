"""Audits service: audit-trail records in PostgreSQL behind a small REST API."""

__version__ = "0.1.0"
