"""daemoneye.merkle against RFC 9162 section 2.1: public SHA-256 known answers, an
independent reference written here from the RFC's recursive definitions, the same
with BLAKE3, and property tests that proofs verify and that any flipped bit fails."""

from __future__ import annotations

import hashlib

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye import merkle
from daemoneye.merkle import BLAKE3, SHA256, Frontier, MemoryTree, ProofError

# --- the reference: RFC 9162 section 2.1, transcribed literally ---------------


def ref_hash(name: str, data: bytes) -> bytes:
    return hashlib.sha256(data).digest() if name == "sha256" else blake3.blake3(data).digest()


def ref_k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(h: str, d: list[bytes]) -> bytes:
    """MTH({}) = HASH(); MTH({d0}) = HASH(0x00 || d0); MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) ||
    MTH(D[k:n]))."""
    n = len(d)
    if n == 0:
        return ref_hash(h, b"")
    if n == 1:
        return ref_hash(h, b"\x00" + d[0])
    k = ref_k(n)
    return ref_hash(h, b"\x01" + ref_mth(h, d[:k]) + ref_mth(h, d[k:]))


def ref_path(h: str, m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, {d0}) = {}; PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k,
    PATH(m - k, D[k:n]) : MTH(D[0:k]) for m >= k."""
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(h, m, d[:k]), ref_mth(h, d[k:])]
    return [*ref_path(h, m - k, d[k:]), ref_mth(h, d[:k])]


def ref_subproof(h: str, m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(h, d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(h, m, d[:k], b), ref_mth(h, d[k:])]
    return [*ref_subproof(h, m - k, d[k:], False), ref_mth(h, d[:k])]


def ref_proof(h: str, m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) for 0 < m < n."""
    return ref_subproof(h, m, d, True)


HASHERS = {"sha256": SHA256, "blake3": BLAKE3}


def tree_of(hasher: merkle.Hasher, data: list[bytes]) -> MemoryTree:
    return MemoryTree(hasher, (hasher.leaf(x) for x in data))


# --- SHA-256 known answers: the public vectors of github.com/transparency-dev/merkle
# (testonly/constants.go, proof/verify_test.go); RFC 6962 and RFC 9162 hash alike. ---

LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243",
          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
LEAF_HASHES = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
]
# (0-based leaf index, tree size, audit path)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def hexes(proof: list[bytes]) -> list[str]:
    return [p.hex() for p in proof]


def test_sha256_known_roots_and_leaves() -> None:
    tree = tree_of(SHA256, LEAVES)
    assert [tree.get(0, i).hex() for i in range(8)] == LEAF_HASHES
    for size, want in enumerate(ROOTS):
        assert tree.root(size).hex() == want
        assert ref_mth("sha256", LEAVES[:size]).hex() == want  # the reference agrees too


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_sha256_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    tree = tree_of(SHA256, LEAVES)
    assert hexes(tree.inclusion_proof(index, size)) == path
    root = bytes.fromhex(ROOTS[size])
    proof = [bytes.fromhex(p) for p in path]
    merkle.verify_inclusion(SHA256, index, size, tree.get(0, index), proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_sha256_known_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    tree = tree_of(SHA256, LEAVES)
    assert hexes(tree.consistency_proof(old, new)) == path
    proof = [bytes.fromhex(p) for p in path]
    merkle.verify_consistency(
        SHA256, old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof
    )


def inclusion_probes(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes):
    """Wrong parameters that must all fail (after transparency-dev's corruption list)."""
    some = bytes.fromhex("abacaba0" + "00" * 26 + "1234")
    yield index + 1, size, leaf, proof, root
    if index:
        yield index - 1, size, leaf, proof, root
    yield index ^ 2, size, leaf, proof, root
    yield index, size * 2, leaf, proof, root
    yield index, size // 2, leaf, proof, root
    yield index, size, some, proof, root
    yield index, size, leaf, proof, some
    yield index, size, leaf, [*proof, b""], root
    yield index, size, leaf, [*proof, root], root
    yield index, size, leaf, [root, *proof], root
    if proof:
        yield index, size, leaf, proof[:-1], root
    if len(proof) > 1:
        yield index, size, leaf, [proof[0], some, *proof[1:]], root


@pytest.mark.parametrize(("index", "size", "path"), [c for c in INCLUSION if c[1] > 1])
def test_sha256_corrupted_inclusion_proofs_fail(index: int, size: int, path: list[str]) -> None:
    tree = tree_of(SHA256, LEAVES)
    proof = [bytes.fromhex(p) for p in path]
    for args in inclusion_probes(index, size, tree.get(0, index), proof, tree.root(size)):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(SHA256, *args)


@pytest.mark.parametrize(("old", "new", "path"), [c for c in CONSISTENCY if c[2]])
def test_sha256_corrupted_consistency_proofs_fail(old: int, new: int, path: list[str]) -> None:
    r1, r2 = bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new])
    proof = [bytes.fromhex(p) for p in path]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((old, new, r1, r2, bad))
    for old_s, new_s, a, b, p in probes:
        if old_s == new_s and a == b and not p:
            continue  # a genuinely valid trivial case created by the mutation
        with pytest.raises(ProofError):
            merkle.verify_consistency(SHA256, old_s, new_s, a, b, p)


def test_trivial_consistency_cases() -> None:
    r1, r2 = b"r" * 32, b"s" * 32
    merkle.verify_consistency(SHA256, 0, 0, r1, r1, [])
    merkle.verify_consistency(SHA256, 0, 5, r1, r2, [])  # everything extends the empty tree
    merkle.verify_consistency(SHA256, 3, 3, r2, r2, [])
    for args in [(0, 0, r1, r2, []), (3, 3, r1, r2, []), (3, 3, r1, r1, [r1]),
                 (0, 5, r1, r2, [r1]), (2, 1, r1, r2, []), (1, 2, r1, r2, [])]:  # fmt: skip
        with pytest.raises(ProofError):
            merkle.verify_consistency(SHA256, *args)


def test_inclusion_outside_the_tree_fails() -> None:
    for index, size in [(0, 0), (1, 1), (2, 1), (5, 3)]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(SHA256, index, size, b"x" * 32, [], b"y" * 32)
    with pytest.raises(ValueError):
        tree_of(SHA256, LEAVES).inclusion_proof(8, 8)


# --- exhaustive agreement with the reference, both hash functions -------------


@pytest.mark.parametrize("name", ["sha256", "blake3"])
def test_agrees_with_reference_for_every_small_tree(name: str) -> None:
    hasher = HASHERS[name]
    data = [i.to_bytes(2, "big") * (i % 5) for i in range(40)]
    tree = tree_of(hasher, data)
    for n in range(0, 41):
        assert tree.root(n) == ref_mth(name, data[:n])
        for m in range(n):
            assert tree.inclusion_proof(m, n) == ref_path(name, m, data[:n])
        for m in range(1, n):
            assert tree.consistency_proof(m, n) == ref_proof(name, m, data[:n])


def test_blake3_differs_from_sha256_and_uses_domain_separation() -> None:
    assert BLAKE3.leaf(b"a") == blake3.blake3(b"\x00a").digest()
    assert BLAKE3.node(b"l", b"r") == blake3.blake3(b"\x01lr").digest()
    assert tree_of(BLAKE3, LEAVES).root().hex() != ROOTS[8]


def test_frontier_resumes_from_stored_nodes() -> None:
    tree = tree_of(BLAKE3, [bytes([i]) for i in range(37)])
    for size in range(38):
        f = Frontier.at(BLAKE3, size, tree.get)
        assert f.root() == tree.root(size)
        if size < 37:
            f.append(tree.get(0, size))
            assert f.root() == tree.root(size + 1)


# --- properties ----------------------------------------------------------------


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


TREE = tree_of(BLAKE3, [i.to_bytes(4, "big") for i in range(1100)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_inclusion_proof_verifies_and_any_flip_fails(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, TREE.size), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof, root, leaf = TREE.inclusion_proof(index, size), TREE.root(size), TREE.get(0, index)
    merkle.verify_inclusion(BLAKE3, index, size, leaf, proof, root)
    bit = data.draw(st.integers(0, 255), label="bit")
    target = data.draw(st.sampled_from(["leaf", "root", "proof"] if proof else ["leaf", "root"]))
    if target == "leaf":
        leaf = flip(leaf, bit)
    elif target == "root":
        root = flip(root, bit)
    else:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        proof = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
    with pytest.raises(ProofError):
        merkle.verify_inclusion(BLAKE3, index, size, leaf, proof, root)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_consistency_proof_verifies_and_any_flip_fails(data: st.DataObject) -> None:
    new = data.draw(st.integers(2, TREE.size), label="new")
    old = data.draw(st.integers(1, new - 1), label="old")
    proof = TREE.consistency_proof(old, new)
    r1, r2 = TREE.root(old), TREE.root(new)
    merkle.verify_consistency(BLAKE3, old, new, r1, r2, proof)
    bit = data.draw(st.integers(0, 255), label="bit")
    target = data.draw(st.sampled_from(["old", "new", "proof"]))
    if target == "old":
        r1 = flip(r1, bit)
    elif target == "new":
        r2 = flip(r2, bit)
    else:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        proof = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
    with pytest.raises(ProofError):
        merkle.verify_consistency(BLAKE3, old, new, r1, r2, proof)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.data())
def test_flipped_entry_changes_the_root(size: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    i = data.draw(st.integers(0, size - 1))
    bit = data.draw(st.integers(0, 31))
    tampered = [*leaves[:i], flip(leaves[i], bit), *leaves[i + 1 :]]
    assert tree_of(BLAKE3, tampered).root() != tree_of(BLAKE3, leaves).root()
    proof = tree_of(BLAKE3, leaves).inclusion_proof(i)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(
            BLAKE3, i, size, BLAKE3.leaf(tampered[i]), proof, tree_of(BLAKE3, leaves).root()
        )
