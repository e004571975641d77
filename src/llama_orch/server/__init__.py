"""HTTP only: parse, call the application layer, translate. Decides nothing."""
