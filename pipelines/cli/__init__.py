"""The `ganpipe` command line: `main` parses and dispatches; one handler module per command group."""

from pipelines.cli.main import main

__all__ = ["main"]
