"""Ingest: the callback endpoint, its decoders, the accept step and the spool (no RQ imports)."""
