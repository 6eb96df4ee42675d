"""Storage: one module per table, plus database creation and migrations."""
