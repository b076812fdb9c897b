"""SHA-256 for the short texts batchflow names things by (task ids, task keys).

CPython's own SHA-256 module where there is one (3.12+: `_sha2`, 3.10 and 3.11: `_sha256`), else
hashlib's: importing hashlib loads OpenSSL, 2.5 ms of every `batchflow validate`, and for texts of
a few dozen bytes the built-in one is faster too (0.48 us a digest against OpenSSL's 0.75, Python
3.11 here). The digests are the same (tests/test_render.py compares them with hashlib's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the same function, as typeshed types it)
    from hashlib import sha256
else:
    try:
        from _sha2 import sha256
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:
            from hashlib import sha256

__all__ = ["sha256"]
