"""The ``eplb`` command line."""
