"""Sources: where a ``Flow`` starts. Each one produces only while there is demand."""
