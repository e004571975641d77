"""Pure scheduling: queue, guardrails, placement. No I/O, no clock, no threads."""
