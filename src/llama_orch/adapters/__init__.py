"""Engine adapters behind one interface, and the adapter host that fronts them."""
