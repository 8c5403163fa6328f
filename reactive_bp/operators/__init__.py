"""Operators, one module per family. ``Flow`` methods delegate here."""
