"""The docs stay true: the CLI reference is fresh, links resolve, and every command line in them exists.

- docs/cli.md equals what ``python -m damage_smp.clidoc`` renders now (``make docs-cli`` refreshes it);
- every relative link in README.md and docs/*.md points at an existing file;
- every ``damage-smp ...`` (or ``python -m damage_smp ...``) line in a ```bash block names an existing command,
  and every ``--flag`` on it exists for that command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from damage_smp.cli import app
from damage_smp.clidoc import render_cli_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# figures that `make demo` produces and the lead copies into docs/img/ (see docs/transfer-learning.md)
DEMO_FIGURES = ("docs/img/demo-per-class-iou.png", "docs/img/demo-val-curves.png")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
SHELL_BLOCKS = {"bash", "sh", "shell"}
SEPARATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "2>", "(", ")", "$(", "`", "do", "then"}


# ============================================================================================ helpers
def command_tree() -> dict[tuple[str, ...], set[str] | None]:
    """Command path (e.g. ('manifest', 'build')) -> its option names; None for a group (the root, manifest)."""
    root = typer.main.get_command(app)
    tree: dict[tuple[str, ...], set[str] | None] = {}

    def walk(group, ctx, prefix: tuple[str, ...]) -> None:
        tree[prefix] = None
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            cctx = cmd.context_class(cmd, info_name=name, parent=ctx)
            if hasattr(cmd, "list_commands"):
                walk(cmd, cctx, (*prefix, name))
            else:
                params = cmd.get_params(cctx)
                tree[(*prefix, name)] = {o for p in params for o in (*p.opts, *p.secondary_opts) if o[0] == "-"}

    walk(root, root.context_class(root, info_name="damage-smp"), ())
    return tree


def bash_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) of each ```bash/```sh/```shell block, with backslash continuations joined."""
    blocks, current, start, lang = [], None, 0, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and current is None:
            current, start, lang = [], number + 1, fence.group(3).lower()
        elif fence and current is not None and not fence.group(3):
            if lang in SHELL_BLOCKS:
                blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def command_lines(text: str, first_line: int) -> list[tuple[int, list[str]]]:
    """Each logical shell line as tokens (comments dropped, && ; | split off), with its line number."""
    out, number, pending, pending_start = [], first_line, "", first_line
    for line in text.splitlines():
        if not pending:
            pending_start = number
        number += 1
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: fall back to plain splitting
            tokens = logical.split("#", 1)[0].split()
        out.append((pending_start, tokens))
    return out


def invocations(tokens: list[str]) -> list[list[str]]:
    """The argument lists after each `damage-smp` / `python -m damage_smp` on a tokenised line."""
    found = []
    for i, tok in enumerate(tokens):
        if Path(tok).name == "damage-smp":  # damage-smp, .venv/bin/damage-smp
            start = i + 1
        elif tok == "damage_smp" and i > 0 and tokens[i - 1] == "-m":  # python -m / torchrun -m
            start = i + 1
        else:
            continue
        args = []
        for arg in tokens[start:]:
            if arg in SEPARATORS or (arg and set(arg) <= set(";&|()<>")):
                break
            args.append(arg)
        found.append(args)
    return found


def check_invocation(args: list[str], tree: dict[tuple[str, ...], set[str] | None]) -> str | None:
    """None if the command and its flags exist; otherwise what is wrong."""
    path: tuple[str, ...] = ()
    rest = list(args)
    while rest and (*path, rest[0]) in tree:
        path = (*path, rest.pop(0))
    options = tree[path]
    if options is None:  # a group (`damage-smp`, `damage-smp manifest`): only --help, or a subcommand
        if not rest or rest[0] == "--help":
            return None
        return f"unknown command {' '.join((*path, rest[0]))!r}"
    for arg in rest:
        if arg.startswith("--") and len(arg) > 2:
            flag = arg.split("=", 1)[0]
            if flag not in options and flag != "--help":
                return f"`damage-smp {' '.join(path)}` has no option {flag}"
    return None


# ============================================================================================ tests
def test_cli_reference_is_up_to_date():
    path = ROOT / "docs" / "cli.md"
    assert path.is_file(), "docs/cli.md is missing; run `make docs-cli`"
    assert path.read_text(encoding="utf-8") == render_cli_reference(), (
        "docs/cli.md is out of date with the CLI; run `make docs-cli`"
    )


def test_cli_reference_covers_every_command_and_option():
    text = render_cli_reference()
    for path, options in command_tree().items():
        if not path:
            continue
        assert f"## `damage-smp {' '.join(path)}`" in text
        for option in (options or set()) - {"--help"}:
            assert f"`{option}`" in text, f"{option} of {' '.join(path)} missing from the reference"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    broken = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http(s):, mailto:, in-page anchors
            file = (doc.parent / target.split("#", 1)[0]).resolve()
            rel = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
            if not file.exists() and rel not in DEMO_FIGURES:
                broken.append(f"{doc.name}:{number}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_demo_figures_present():
    missing = [f for f in DEMO_FIGURES if not (ROOT / f).is_file()]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not copied yet: run `make demo`, then copy experiments/demo/compare/"
            "per_class_iou.png and val_curves.png there"
        )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_command_lines_in_docs_exist(doc):
    tree = command_tree()
    problems = []
    for start, block in bash_blocks(doc):
        for number, tokens in command_lines(block, start):
            for args in invocations(tokens):
                problem = check_invocation(args, tree)
                if problem:
                    problems.append(f"{doc.name}:{number}: {problem}: {' '.join(args)}")
    assert not problems, "command lines in the docs that the CLI does not have:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------- the checker itself
def test_checker_catches_unknown_commands_and_flags(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "damage-smp manifest check data.csv --labels binary   # fine\n"
        "damage-smp train --epochs 2 \\\n"
        "    --no-such-flag 3\n"
        "for s in 0 1; do .venv/bin/damage-smp trian --seed $s; done\n"
        "torchrun --nproc-per-node 2 -m damage_smp train --batch-size=4 && damage-smp manifest bild --x\n"
        "```\n"
        "```text\ndamage-smp nonsense\n```\n",
        encoding="utf-8",
    )
    tree = command_tree()
    found = [
        (number, check_invocation(args, tree))
        for start, block in bash_blocks(doc)
        for number, tokens in command_lines(block, start)
        for args in invocations(tokens)
    ]
    assert found == [
        (2, None),
        (3, "`damage-smp train` has no option --no-such-flag"),
        (5, "unknown command 'trian'"),
        (6, None),
        (6, "unknown command 'manifest bild'"),
    ]


def test_link_pattern_finds_relative_targets():
    line = 'See [data](data.md#masks), ![fig](img/a.png "title") and [web](https://example.org).'
    assert LINK.findall(line) == ["data.md#masks", "img/a.png", "https://example.org"]
