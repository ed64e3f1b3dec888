"""Bridge: maps presence, reported state, config acks and job progress from MQTT into MongoDB."""
