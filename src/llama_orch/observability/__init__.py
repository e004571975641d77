"""Logs with narration, redaction at the sink, and the one metrics registry."""
