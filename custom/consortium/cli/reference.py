"""The reference of every `consortium` command and flag, as Markdown, from the parser itself.

    python -m consortium.cli.reference > /tmp/ref.md    # docs/cli.md keeps it below its overview

A test checks that docs/cli.md names every command and flag the parser knows, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import sys


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps its sub-commands here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name) or ""


def commands(parser: argparse.ArgumentParser, prefix: str = "consortium"):
    """(command path, parser, help) for every leaf command, depth first."""
    children = list(_subparsers(parser))
    if not children:
        yield prefix, parser, ""
    for name, sub, help_text in children:
        for path, leaf, leaf_help in commands(sub, f"{prefix} {name}"):
            yield path, leaf, leaf_help or help_text


def options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(flags or positional name, help with default) of one command, without -h."""
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(action.option_strings) or action.dest.upper()
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            text += f" (default: {action.default})"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            text += f" (one of: {', '.join(map(str, action.choices))})"
        out.append((f"`{name}`", text.strip()))
    return out


def reference(parser: argparse.ArgumentParser) -> str:
    lines = ["## Every command and flag", "", "Global options (before the command):", "", "| option | meaning |",
             "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {text} |" for name, text in options(parser)]
    for path, leaf, help_text in commands(parser):
        if path == "consortium" or any(part.startswith("_") for part in path.split()):
            continue  # internal entry points (the simulator's worker) are not user commands
        lines += ["", f"### `{path}`", "", help_text or "", ""]
        opts = options(leaf)
        if opts:
            lines += ["| argument | meaning |", "|---|---|"] + [f"| {n} | {t} |" for n, t in opts]
        else:
            lines.append("No arguments.")
    return "\n".join(lines) + "\n"


def main() -> int:
    from consortium.cli import build_parser

    sys.stdout.write(reference(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
