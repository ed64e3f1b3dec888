"""Reference device agent and fleet simulator."""
