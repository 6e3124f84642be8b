"""The broker: bus forwarding, RPC routing and the service registry."""
