"""Corpus hygiene: documents dropped before the split, as options (off by default).

- ``data.min_chars``: a document with fewer characters (not counting whitespace at either end) is
  dropped as short.
- ``data.drop_duplicates``: a document whose exact text came earlier in the corpus is dropped. A
  16-byte BLAKE2b digest of each kept document's UTF-8 text is held in a set: 83 bytes of memory
  per distinct document measured at a million (a 49-byte bytes object plus the set's slots, which
  vary with its fill between about 60 and 115), so about 1 GB per 10 million documents; a collision (two different texts, one dropped) is expected once in 2**64
  pairs of documents.

The filter runs in the process that reads the corpus, in corpus order, before documents are split
into train/val or handed to encoding workers: what is dropped does not depend on the number of
workers, and the train/val split is drawn over the documents kept. A document cut at
``data.doc_separator`` is each of its pieces.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class DocumentFilter:
    """Decides, document by document, what is kept; counts what it read and dropped."""

    min_chars: int = 0
    drop_duplicates: bool = False
    read: int = 0
    short: int = 0
    duplicate: int = 0
    _seen: set[bytes] = field(default_factory=set, repr=False)

    @property
    def active(self) -> bool:
        return self.min_chars > 0 or self.drop_duplicates

    def keep(self, doc: str) -> bool:
        self.read += 1
        if self.min_chars and len(doc.strip()) < self.min_chars:
            self.short += 1
            return False
        if self.drop_duplicates:
            digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in self._seen:
                self.duplicate += 1
                return False
            self._seen.add(digest)
        return True

    def counts(self) -> dict:
        """What ``meta.json`` and the tokenize summary show."""
        return {
            "min_chars": self.min_chars,
            "drop_duplicates": self.drop_duplicates,
            "documents_read": self.read,
            "dropped_short": self.short,
            "dropped_duplicate": self.duplicate,
            "documents_kept": self.read - self.short - self.duplicate,
        }
