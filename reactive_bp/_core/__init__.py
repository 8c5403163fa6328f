"""Self-contained machinery every source and operator is built on.

Nothing here imports the rest of the package.
"""
