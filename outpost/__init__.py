"""Outpost: the command line, settings and the plumbing every service shares."""
