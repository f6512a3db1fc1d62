"""Unit tests: one module or concept each, no long-running processes."""
