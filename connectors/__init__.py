"""Edges of the system: files, Kafka, databases, Redis, Betfair's servers, local services."""
