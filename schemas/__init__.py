"""Shared pydantic models: the device protocol and the WiFi configuration.

- :mod:`schemas.topics`: the topic tree; the only code that builds or parses topics;
- :mod:`schemas.protocol`: every MQTT payload, the ordering key, parsing with rejections;
- :mod:`schemas.wifi`: the WiFi config, its validation, merge, canonical JSON and hash;
- :mod:`schemas.documents`: MongoDB collections and which service owns which field;
- :mod:`schemas.asyncapi`: the AsyncAPI 3.0 document (``outpost schemas asyncapi``);
- :mod:`schemas.errors`: :class:`~schemas.errors.SchemaError`, the base of all errors here.

The human-readable page is ``docs/protocol.md``.
"""
