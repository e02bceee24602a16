"""The operators' subcommands of ``exchange``, one module each; every module
here is imported by ``engine.service.cli`` and registers its subcommands
with ``@command``."""
