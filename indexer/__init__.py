"""Offline indexing pipeline: scan, load, encode, store."""
