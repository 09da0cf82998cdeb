"""Storage: tables, engine set-up, migrations."""
