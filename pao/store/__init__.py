"""Typed functions over a connection, one module per table; callers never see a cursor."""
