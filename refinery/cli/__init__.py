"""The `refinery` command: each subcommand parses its options, calls one library function and prints the result.
`app` holds the command group and `main`; the commands live beside it by what they work on (a project's data and
rounds, review, the judge, the model cache) and register themselves on the app when imported, here, in the order
`refinery --help` lists them."""

from refinery.cli import rounds  # noqa: I001  (first: the round's commands open the help)
from refinery.cli import drift, judge, models, review  # noqa: F401
from refinery.cli.app import app, main

__all__ = ["app", "main", "rounds", "drift", "judge", "models", "review"]
