"""Make things exist locally: model artifacts (fetch, verify, register in the catalog)."""
