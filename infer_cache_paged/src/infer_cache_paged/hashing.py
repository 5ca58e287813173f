"""Content hashes of full KV blocks, chained from the start of the sequence.

The hash of block ``i`` covers its parent's hash (block ``i-1``, or a root made from the
request's cache salt) and its own token ids, so equal hashes mean equal *prefixes*, not just
equal blocks: the KV of a block depends on every token before it. The digest is a
cryptographic hash (SHA-256 by default, or BLAKE2b) over a fixed-width encoding — never
Python's ``hash()``, whose collisions are easy to construct and would let one request read
another's KV.

Encoding (unambiguous, so different inputs cannot produce the same bytes):

- root: ``b"infer-prefix-cache/v1"`` + ``b"\\x00"`` (no salt) or ``b"\\x01"`` + the salt's UTF-8;
- block: the parent's digest (fixed length) + each token id as a signed 64-bit integer in
  native byte order (hashes are keys inside one process, never stored or sent).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import Literal

HashAlgorithm = Literal["sha256", "blake2b"]

_ROOT = b"infer-prefix-cache/v1"


class BlockHasher:
    """Computes root and block hashes with one algorithm."""

    def __init__(self, algorithm: HashAlgorithm = "sha256") -> None:
        if algorithm == "sha256":
            self._new = hashlib.sha256
        elif algorithm == "blake2b":
            self._new = lambda data: hashlib.blake2b(data, digest_size=32)
        else:  # the options model rejects anything else first
            raise ValueError(f"unknown hash algorithm {algorithm!r}")
        self.algorithm = algorithm

    def root(self, cache_salt: str | None) -> bytes:
        """The parent hash of a request's first block."""
        tag = b"\x00" if cache_salt is None else b"\x01" + cache_salt.encode("utf-8")
        return self._new(_ROOT + tag).digest()

    def block(self, parent: bytes, token_ids: Sequence[int]) -> bytes:
        """The hash of a full block holding ``token_ids`` after the prefix hashed as ``parent``."""
        return self._new(parent + array("q", token_ids).tobytes()).digest()

    def chain(self, parent: bytes, token_ids: Sequence[int], block_size: int, start: int, end: int) -> list[bytes]:
        """Hashes of full blocks ``start .. end-1`` of ``token_ids``, ``parent`` being block
        ``start - 1``'s hash (or the root)."""
        hashes = []
        for i in range(start, end):
            parent = self.block(parent, token_ids[i * block_size: (i + 1) * block_size])
            hashes.append(parent)
        return hashes
