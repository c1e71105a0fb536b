"""The prediction ledger: every served or streamed prediction in a lake table, exactly once.

Rows wait in a local write-ahead log (:mod:`.wal`) until one committer (:mod:`.committer`) ships
them to an Iceberg or Delta table (:mod:`.table`) in commits that record what they shipped;
``lakeinfer replay`` (:mod:`.replay`) re-scores the ledger's inputs. See docs/ledger.md.
"""

from .committer import Committer
from .table import LedgerTable

__all__ = ["Committer", "LedgerTable"]
