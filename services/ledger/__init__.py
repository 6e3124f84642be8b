"""The ledger service: BLAKE3 hash chain, RFC 9162 Merkle tree, signed checkpoints."""
