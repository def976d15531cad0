"""One module per `mme` subcommand that belongs to the server side."""
