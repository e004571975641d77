"""Wire and port types: API models, SSE payloads, the adapter interface. No behaviour."""
