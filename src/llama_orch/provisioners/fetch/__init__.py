"""Fetchers, one per source scheme; each runs behind the outbound policy."""
