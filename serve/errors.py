"""Errors that end a CLI command with one readable line and a non-zero exit code."""


class CommandError(Exception):
    """A user-facing failure of an `mme` subcommand; its message is printed as is."""
