"""The local tooling's subcommands of ``eplb`` (``cluster``, ``demo``), registered through
the ``eplb.commands`` entry points so that the production CLI never imports them by name."""
