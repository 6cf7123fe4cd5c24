"""The client's source: transport, client and resources (the blocking twin is generated from it)."""
