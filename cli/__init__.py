"""The ``outpost`` command: the one place that assembles every service's commands.

It sits above every other package (docs/architecture.md): the shared core and the
services never import it.
"""
