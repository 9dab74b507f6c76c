"""The Typer layer: flags → one library call → print. Only ``rlgf_cli.app`` imports it."""
