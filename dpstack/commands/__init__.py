"""One module per CLI command: a `Config` dataclass (schema + help), `CONFIG_NAME`, and `run(cfg)`."""
