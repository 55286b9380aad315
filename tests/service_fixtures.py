"""Fixtures for the real services (PostgreSQL, Kafka, Redis) that `make test` starts."""
