"""Pure, engine-free state machines: parsing, market state, windows, features.

Nothing in this package imports Bytewax, Kafka or a database driver, so every
operator is unit-testable on its own with plain Python values.
"""
