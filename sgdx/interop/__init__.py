"""Interoperability with other frameworks' optimizer state (imported on demand)."""
