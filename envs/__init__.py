"""Benchmark tasks (gymnasium API) and their expert demonstrators."""
