"""A Markdown CLI reference generated from the Typer app: ``python -m damage_smp.clidoc > docs/cli.md``.

Walks the click command tree that Typer builds (``typer.main.get_command``) and writes, for every command and
subcommand, its usage line, its help text and a table of its arguments and options (type, default, help).
The text depends only on the app, never on the terminal (no rich rendering, no widths), so
``tests/test_docs.py`` can demand that docs/cli.md equals a fresh rendering (``make docs-cli`` refreshes it).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

PROG_NAME = "damage-smp"
HEADER = (
    "<!-- Generated from the Typer app by `python -m damage_smp.clidoc > docs/cli.md` (`make docs-cli`); "
    "do not edit by hand: tests/test_docs.py checks that it is up to date. -->"
)


def render_cli_reference(app=None) -> str:
    """The whole reference as Markdown text (ends with one newline)."""
    import typer

    if app is None:
        from .cli import app
    root = typer.main.get_command(app)
    ctx = _context(root, PROG_NAME, None)
    lines = [HEADER, "", f"# `{PROG_NAME}` command reference", ""]
    lines += [_help_text(root), ""] if _help_text(root) else []
    lines += [
        "Every command takes `--help`. Errors in your input end a command with one red line (what is wrong and "
        "how to fix it) and exit code 1; set `DAMAGE_SMP_DEBUG=1` to see the Python traceback instead. "
        "A command line that cannot be parsed (an unknown option, a missing argument, a value of the wrong type) "
        "is a usage error: the usage line, one line saying what is wrong, and exit code 2, as with every "
        "click/argparse tool. "
        "See also the [quick start](quickstart.md) and [troubleshooting](troubleshooting.md).",
        "",
        "Defaults of `train` come from its settings (`TrainConfig`; a `--config` file overrides them and flags "
        "override both); the table shows the built-in value.",
        "",
    ]
    commands = list(_walk(root, ctx))
    lines += ["## Commands", ""]
    for path, cmd, _ in commands:
        lines.append(f"- [`{' '.join(path)}`](#{_anchor(path)}) — {_first_sentence(_help_text(cmd))}")
    lines.append("")
    for path, cmd, cctx in commands:
        lines += _command_section(path, cmd, cctx)
    return "\n".join(lines).rstrip() + "\n"


# ============================================================================================ tree
def _context(cmd, name: str, parent):
    """A click Context for help rendering only (nothing is parsed or run)."""
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _walk(group, ctx, prefix: tuple[str, ...] = (PROG_NAME,)):
    """(command path, command, context) for every command under group, depth first, in registration order."""
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        cctx = _context(cmd, name, ctx)
        path = (*prefix, name)
        yield path, cmd, cctx
        if hasattr(cmd, "list_commands"):  # a subcommand group such as `manifest`
            yield from _walk(cmd, cctx, path)


def _anchor(path: tuple[str, ...]) -> str:
    """GitHub's heading anchor for '`damage-smp manifest build`': damage-smp-manifest-build."""
    return "-".join(path).lower()


# ============================================================================================ sections
def _command_section(path: tuple[str, ...], cmd, ctx) -> list[str]:
    lines = [f"## `{' '.join(path)}`", "", "```text", _usage(path, cmd, ctx), "```", ""]
    text = _help_text(cmd)
    if text:
        lines += [text, ""]
    if hasattr(cmd, "list_commands"):
        subs = [n for n in cmd.list_commands(ctx) if not getattr(cmd.get_command(ctx, n), "hidden", False)]
        lines += ["Subcommands: " + ", ".join(f"[`{n}`](#{_anchor((*path, n))})" for n in subs) + ".", ""]
        return lines
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name != "argument"]
    config_defaults = _config_defaults(path)
    if arguments:
        lines += ["| argument | type | required | help |", "|---|---|---|---|"]
        for p in arguments:
            name = _metavar(p).replace("|", "\\|")  # GFM: an escaped pipe is fine inside a code span
            lines.append(f"| `{name}` | {_type(p, ctx)} | {'yes' if p.required else 'no'} | {_cell(p.help)} |")
        lines.append("")
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for p in options:
            names = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            lines.append(f"| {names} | {_type(p, ctx)} | {_default(p, config_defaults)} | {_cell(p.help)} |")
        lines.append("")
    return lines


def _usage(path: tuple[str, ...], cmd, ctx) -> str:
    """'damage-smp predict [OPTIONS] [RUN_DIR] [INPUTS]...' (conventional upper-case argument names)."""
    if hasattr(cmd, "list_commands"):
        return f"{' '.join(path)} COMMAND [ARGS]..."
    pieces = [*path, "[OPTIONS]"]
    for p in cmd.get_params(ctx):
        if p.param_type_name == "argument":
            meta = _metavar(p)
            pieces.append(meta if p.required else f"[{meta[:-3]}]..." if meta.endswith("...") else f"[{meta}]")
    return " ".join(pieces)


def _help_text(cmd) -> str:
    text = inspect.cleandoc(cmd.help or "")
    return text.replace("\b\n", "").strip()


def _first_sentence(text: str) -> str:
    first = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    return _cell(first)


def _metavar(p) -> str:
    meta = getattr(p, "metavar", None) or p.name.upper()
    return f"{meta}..." if (p.nargs == -1 or getattr(p, "multiple", False)) and not meta.endswith("...") else meta


def _type(p, ctx) -> str:
    if getattr(p, "is_flag", False) and getattr(p, "is_bool_flag", True):
        return "flag"
    if hasattr(p, "display_type"):  # Typer >= 0.20 parameters
        label = p.display_type(ctx).strip("<>")
    else:  # plain click parameters
        label = getattr(p.type, "name", str(p.type))
    return f"`{label}`" if label else ""


def _default(p, config_defaults: dict) -> str:
    """The built-in default: the option's own, or (train) the TrainConfig field it overrides."""
    if p.required:
        return "required"
    value = p.default
    if value is None and p.name in config_defaults:
        value = config_defaults[p.name]
    if callable(value):
        return "(computed)"
    if isinstance(value, bool) and p.secondary_opts:  # --x/--no-x: name the switch that is on
        return f"`{p.opts[0] if value else p.secondary_opts[0]}`"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == [] or value == ():
        return "—"
    if isinstance(value, list | tuple):
        value = " ".join(map(str, value))
    return f"`{value}`"


def _config_defaults(path: tuple[str, ...]) -> dict:
    """train's options default to None ('not given'); the value they fall back to is TrainConfig's."""
    if path[1:] != ("train",):
        return {}
    from .config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _cell(text: str | None) -> str:
    """Help text made safe for one Markdown table cell."""
    if not text:
        return ""
    text = " ".join(inspect.cleandoc(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def main() -> None:
    """Write the reference to stdout as UTF-8, whatever the locale."""
    sys.stdout.buffer.write(render_cli_reference().encode("utf-8"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
