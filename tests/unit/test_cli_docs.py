"""docs/cli.md names every command and every flag the `consortium` parser knows."""

from pathlib import Path

from consortium.cli import build_parser
from consortium.cli.reference import commands, options

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_doc_names_every_command_and_flag():
    text = DOC.read_text()
    parser = build_parser()
    missing = []
    for path, leaf, _ in commands(parser):
        if path == "consortium" or any(p.startswith("_") for p in path.split()):
            continue
        if f"### `{path}`" not in text:
            missing.append(path)
            continue
        section = text.split(f"### `{path}`", 1)[1].split("\n### ", 1)[0]
        missing += [f"{path} {name}" for name, _ in options(leaf) if name not in section]
    assert not missing, f"not in docs/cli.md (regenerate: python -m consortium.cli.reference): {missing}"


def test_demo_steps_get_every_option_of_their_own_command():
    """`consortium demo` runs data synth, poc up and submit: each step sees its command's defaults (a missing
    attribute once crashed `make demo` after a new submit flag)."""
    from consortium.cli.run import step_args

    parser = build_parser()
    demo = parser.parse_args(["demo", "--job", "fedprox", "--timeout", "60"])
    for argv in (["data", "synth"], ["poc", "up"], ["submit", demo.job]):
        own = vars(parser.parse_args(argv))
        step = vars(step_args(demo, *argv))
        assert set(own) <= set(step), argv
    step = step_args(demo, "submit", demo.job)
    assert (step.job, step.timeout, step.rounds, step.no_wait) == ("fedprox", 60, None, False)
    assert step.round_timeout is None and step.fn.__name__ == "cmd_submit"
