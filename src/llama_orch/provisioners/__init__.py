"""Make things exist locally: model artifacts (fetch, verify, register in the catalog) and
engines (``engine``: download, build, install or pull them before a pool launches them)."""
