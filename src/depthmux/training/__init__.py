"""Training loops: thin, over library modules."""
