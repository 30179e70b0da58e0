"""Delivery: render, send, classify and record, a batch at a time (no RQ, no Starlette)."""
