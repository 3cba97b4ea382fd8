"""The `refinery` command group: the app every command registers on, the options they share (--project, --json),
and `main`, which runs a command and turns user errors into one line and exit code 1. The commands live in the
modules beside this one, by what they work on; `refinery.cli` imports them all."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from refinery.errors import Interrupted, RefineryError, describe_os_error, shown_text


class _PlainArgument(typer.core.TyperArgument):
    """An argument shown by its metavar alone (`FILE...`, not typer's `FILE <list[Path]>`), in click's usage style."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self._rich_display_name()
        return name if self.required else f"[{name}]"


def _plain_arguments(command) -> None:
    for param in command.params:
        if isinstance(param, typer.core.TyperArgument) and param.metavar:
            param.__class__ = _PlainArgument
    for sub in getattr(command, "commands", {}).values():
        _plain_arguments(sub)


class _Group(typer.core.TyperGroup):
    """The root command group: its arguments (and its subcommands') are shown by their metavars in --help."""

    def main(self, *args, **kwargs):
        _plain_arguments(self)
        return super().main(*args, **kwargs)


app = typer.Typer(
    cls=_Group,
    help="Data-centric fine-tuning: train a LoRA adapter, find the patterns behind its failures, add examples "
         "that target them, and repeat until the evals plateau.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ProjectOption = Annotated[Path | None, typer.Option(
    "--project", "-p", metavar="DIR",
    help="Project folder (or its project file). Default: $REFINERY_PROJECT, else the nearest "
                            "folder up from here with refinery.toml or a [tool.refinery] table in pyproject.toml.",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def _show_version(value: bool) -> None:
    if value:
        from refinery import __version__
        print(f"refinery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context, project: ProjectOption = None,
          version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", is_eager=True,
                                                callback=_show_version)] = False) -> None:
    ctx.obj = {"project": project}


def _project(ctx: typer.Context):
    from refinery.project import load_project
    return load_project(ctx.obj["project"])


def _choice(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise RefineryError(f"{flag} {value}: expected one of: {', '.join(allowed)}.")


def _check_arguments(args: list[str]) -> None:
    """Every argument must be text: bytes that are not UTF-8 (a file name in another encoding) cannot be stored or
    compared, so they are refused here rather than deep inside a command."""
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise RefineryError(f"argument {position} ({shown_text(arg)}) is not valid UTF-8. refinery takes text "
                                f"arguments only; rename the file, or give the value in UTF-8.") from None


def _described(exc: Exception) -> str | None:
    from refinery.store import describe_store_damage
    return describe_os_error(exc) if isinstance(exc, OSError) else describe_store_damage(exc)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print `Error: ...` and return 1, without a traceback; Ctrl-C returns 130."""
    try:
        _check_arguments(sys.argv[1:] if argv is None else argv)
        code = app(args=argv, prog_name="refinery", standalone_mode=False)
    except Interrupted as exc:
        print(f"Interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except RefineryError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except Exception as exc:  # a path the file system refused (too long, no permission, no space); a damaged store
        if (described := _described(exc)) is None:
            raise
        print(f"Error: {described}", file=sys.stderr)
        return 1
    if code == 130:  # typer turns a KeyboardInterrupt in a command into this exit code
        print("Interrupted.", file=sys.stderr)
    return code if isinstance(code, int) else 0
