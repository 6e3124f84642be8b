"""Per-service settings sections, one module each, gathered into `daemoneye.config.Settings`.

In a TOML file each is a table (`[collector]`); in the environment, a nested key
(`DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S=5`).
"""
