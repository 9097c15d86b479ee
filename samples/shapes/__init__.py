"""Synthetic shapes: a toy dataset for smoke tests and quick training runs."""
