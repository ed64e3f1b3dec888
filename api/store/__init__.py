"""MongoDB access for the api: every query lives here, always scoped to a tenant."""
