"""RFC 9162 (section 2.1) Merkle tree hashing, proofs and proof verification.

The hash function is pluggable: the ledger uses BLAKE3, the known-answer tests
SHA-256 (which makes the tree exactly RFC 9162's / RFC 6962's). Trees are read
through a node reader `get(level, index)` returning the hash of the complete,
aligned subtree covering leaves `[index << level, (index + 1) << level)`; level 0
is the leaf hashes. Every tree hash, inclusion proof and consistency proof is
assembled from O(log n) such nodes, so a store that keeps the complete subtrees
answers a proof with O(log n) reads instead of rehashing the leaves.

`Frontier` is the append side: the hashes of the complete subtrees making up the
current tree (one per set bit of its size), from which the root follows and which
reports every node an append completes, for the store to keep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import blake3

NodeReader = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify; the message says which check failed."""


@dataclass(frozen=True)
class Hasher:
    name: str
    digest: Callable[[bytes], bytes]
    size: int = 32

    def leaf(self, data: bytes) -> bytes:
        return self.digest(b"\x00" + data)

    def node(self, left: bytes, right: bytes) -> bytes:
        return self.digest(b"\x01" + left + right)

    def empty_root(self) -> bytes:
        return self.digest(b"")


def _blake3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


BLAKE3 = Hasher("blake3", _blake3)
SHA256 = Hasher("sha256", _sha256)


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- tree hashes and proofs from stored nodes --------------------------------


def subtree_hash(hasher: Hasher, get: NodeReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) where `start` is aligned as in RFC 9162's recursion."""
    n = end - start
    if _is_pow2(n) and start % n == 0:
        return get(n.bit_length() - 1, start // n)
    k = split_point(n)
    return hasher.node(
        subtree_hash(hasher, get, start, start + k), subtree_hash(hasher, get, start + k, end)
    )


def root_hash(hasher: Hasher, get: NodeReader, size: int) -> bytes:
    return hasher.empty_root() if size == 0 else subtree_hash(hasher, get, 0, size)


def inclusion_proof(hasher: Hasher, get: NodeReader, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, leaf to root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, n, m = 0, size, index
    while n > 1:  # walk down from the root; siblings are collected root-first
        k = split_point(n)
        if m < k:
            proof.append(subtree_hash(hasher, get, start + k, start + n))
            n = k
        else:
            proof.append(subtree_hash(hasher, get, start, start + k))
            start, n, m = start + k, n - k, m - k
    proof.reverse()
    return proof


def consistency_proof(hasher: Hasher, get: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1 (empty when trivial)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, n, m, whole = 0, new_size, old_size, True
    while m != n:  # SUBPROOF(m, D[start:start+n], whole), unrolled
        k = split_point(n)
        if m <= k:
            proof.append(subtree_hash(hasher, get, start + k, start + n))
            n = k
        else:
            proof.append(subtree_hash(hasher, get, start, start + k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        proof.append(subtree_hash(hasher, get, start, start + n))
    proof.reverse()
    return proof


# --- verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ----------------------


def root_from_inclusion(
    hasher: Hasher, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    if index >= size or index < 0:
        raise ProofError(f"leaf index {index} is not inside a tree of size {size}")
    for i, p in enumerate(proof):
        if len(p) != hasher.size:
            raise ProofError(f"proof element {i} has {len(p)} bytes, not {hasher.size}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = hasher.node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hasher.node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    hasher: Hasher, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows leaf `index` is in the tree with `root`."""
    if len(leaf_hash) != hasher.size:
        raise ProofError(f"leaf hash has {len(leaf_hash)} bytes, not {hasher.size}")
    if root_from_inclusion(hasher, index, size, leaf_hash, proof) != root:
        raise ProofError("inclusion proof leads to a different root hash")


def verify_consistency(
    hasher: Hasher,
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Raise ProofError unless `proof` shows the tree `old_root` is a prefix of `new_root`."""
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"a tree of size {new_size} cannot extend one of size {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("trees of equal size need an empty consistency proof")
        if old_root != new_root:
            raise ProofError("trees of equal size have different root hashes")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency with the empty tree needs an empty proof")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    for i, p in enumerate(proof):
        if len(p) != hasher.size:
            raise ProofError(f"proof element {i} has {len(p)} bytes, not {hasher.size}")
    path = list(proof)
    if _is_pow2(old_size):
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = hasher.node(c, fr)
            sr = hasher.node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hasher.node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root hash")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root hash")


# --- appending ---------------------------------------------------------------


class Frontier:
    """The complete subtrees of a growing tree, largest (leftmost) first."""

    __slots__ = ("hasher", "hashes", "size")

    def __init__(self, hasher: Hasher, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.hasher = hasher
        self.size = size
        self.hashes = list(hashes)
        if len(self.hashes) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} has {bin(size).count('1')} subtrees")

    @classmethod
    def at(cls, hasher: Hasher, size: int, get: NodeReader) -> Frontier:
        """The frontier of the stored tree of `size` leaves: one read per set bit."""
        hashes, start = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(get(level, start >> level))
                start += 1 << level
        return cls(hasher, size, hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf; returns the (level, index, hash) of every node it completes."""
        node = self.hasher.node
        hashes = self.hashes
        i, level, h = self.size, 0, leaf_hash
        done = []
        while i & 1:
            h = node(hashes.pop(), h)
            i >>= 1
            level += 1
            done.append((level, i, h))
        hashes.append(h)
        self.size += 1
        return done

    def root(self) -> bytes:
        if not self.hashes:
            return self.hasher.empty_root()
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = self.hasher.node(h, r)
        return r

    def copy(self) -> Frontier:
        return Frontier(self.hasher, self.size, self.hashes)


class MemoryTree:
    """Every node of a tree in memory: for tests, benchmarks and small verifiers."""

    def __init__(self, hasher: Hasher, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.hasher = hasher
        self.levels: list[list[bytes]] = [[]]
        self.frontier = Frontier(hasher)
        for leaf in leaf_hashes:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, leaf_hash: bytes) -> None:
        self.levels[0].append(leaf_hash)
        for level, _index, h in self.frontier.append(leaf_hash):
            if level == len(self.levels):
                self.levels.append([])
            self.levels[level].append(h)

    def get(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return root_hash(self.hasher, self.get, self.size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self.hasher, self.get, index, self.size if size is None else size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new = self.size if new_size is None else new_size
        return consistency_proof(self.hasher, self.get, old_size, new)
