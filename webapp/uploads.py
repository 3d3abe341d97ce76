"""Example images people upload to search with, kept for a while in memory so that the page's
address can name them (``upload=<key>``) and a reload or a shared link finds them again.

They are never written to disk, the store is capped in bytes and in age, and the oldest go first.
The key is derived from the content, so the same image uploaded twice is one entry.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

KEY_LENGTH = 24   # hex characters of the SHA-256 of the bytes


class UploadStore:
    def __init__(self, max_bytes: int = 64 << 20, max_age_seconds: float = 3600) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age_seconds
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def key_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:KEY_LENGTH]

    def put(self, data: bytes) -> str:
        key = self.key_of(data)
        with self._lock:
            if key in self._items:
                self._size -= len(self._items.pop(key)[1])
            self._items[key] = (time.monotonic(), data)
            self._size += len(data)
            self._evict()
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._evict()
            item = self._items.get(key)
            return item[1] if item else None

    def _evict(self) -> None:
        cutoff = time.monotonic() - self.max_age
        while self._items:
            oldest_key, (stored_at, data) = next(iter(self._items.items()))
            if self._size <= self.max_bytes and stored_at >= cutoff:
                break
            del self._items[oldest_key]
            self._size -= len(data)
