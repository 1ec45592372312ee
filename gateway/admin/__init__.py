"""The abuse desk's tools: one implementation of each action (actions.py), called by
the CLI commands and by the admin listener (server.py: the JSON API and the console)."""
