"""Provisioners: make engines (``engine``) exist locally before a pool launches them."""
