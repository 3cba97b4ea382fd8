"""`refinery models`: the cache of converted base models (GGUF files and packaged models made into transformers
folders). Registered on the main app by `refinery.cli`; needs no project."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from refinery.cli.app import JsonOption, app
from refinery.cli.terminal import console, print_json

models_app = typer.Typer(help="The cache of converted base models (a .gguf base_model, or pypi:smollm2-135m-instruct, "
                              "is converted once into a transformers folder there): list it, or clear it.",
                         rich_markup_mode=None)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the converted models in the cache ($REFINERY_CACHE/models, else ~/.cache/refinery/models)."""
    if ctx.invoked_subcommand:
        return
    from refinery.models import cache_dir, list_cached

    cached = list_cached()
    if as_json:
        return print_json({"cache": str(cache_dir()), "models": [vars(c) for c in cached]})
    console.print(f"Model cache: {cache_dir()}", markup=False)
    if not cached:
        console.print("No converted models.", markup=False)
        return
    table = Table("name", "MB", "converted from", "path")
    for model in cached:
        table.add_row(model.name, f"{model.megabytes:.0f}", model.source or "(incomplete)", model.path)
    console.print(table)


@models_app.command("clear")
def clear(names: Annotated[list[str] | None, typer.Argument(metavar="NAME", help="Models to delete (default: all).",
                                                              show_default=False)] = None) -> None:
    """Delete converted models from the cache; the next run that needs one converts it again."""
    from refinery.models import cache_dir, clear_cached

    removed = clear_cached(names or None)
    freed = sum(m.megabytes for m in removed)
    console.print(f"Deleted {len(removed)} model(s) from {cache_dir()}, {freed:.0f} MB"
                  + (f": {', '.join(m.name for m in removed)}." if removed else "."), markup=False)
