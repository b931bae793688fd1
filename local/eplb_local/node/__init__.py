"""The local node agent: runs the pods the real controllers create, as local processes."""
