"""Shared pydantic models: the device protocol (MQTT payloads, topics) and WiFi config."""
