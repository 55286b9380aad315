"""Database schema: versioned migrations in `sql/migrations` and the migrator in `sql.migrate`."""
