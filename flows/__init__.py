"""Bytewax dataflows: sources → operators → sinks, and nothing else."""
