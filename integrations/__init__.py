"""Provider adapters (one module each). Only `reminder.bootstrap` imports this package."""
