"""Application layer: async glue between the core, the pool manager and the adapter host."""
