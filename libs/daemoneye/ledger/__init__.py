"""The audit ledger's shared parts: entry encoding, stored tree, checkpoints, verifiers.

The ledger service appends through `store.LedgerWriter`; the console reads the same
RocksDB directory (read-only) through `store.LedgerStore` and verifies with
`verify`, so none of it needs the service running.
"""
