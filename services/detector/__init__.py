"""The detector: SQL detection rules over the live process table."""
