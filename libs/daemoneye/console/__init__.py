"""The `daemoneye` command."""
