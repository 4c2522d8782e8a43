"""The local stack: embedded PostgreSQL and service processes, for `make run`, tests and bench."""
