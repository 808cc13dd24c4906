"""Demonstration data: the zarr episode store, training windows, and importers."""
