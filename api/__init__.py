"""REST facade for admins: tenants, tokens, devices, config, firmware, rollouts."""
