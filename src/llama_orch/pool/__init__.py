"""Pool manager: GPU inventory, replicas, readiness, leases and snapshots for placement."""
