"""
Tests of cli.py, the command line every script shares: options generated from a config dataclass,
--help from the fields' own help, one-line errors, and command_line as the inverse of parse.

    python -m pytest -q test_cli.py
"""

import dataclasses

import pytest

import cli


@dataclasses.dataclass
class Inner:
    depth: int = 3
    mode: str = "a"

    def __post_init__(self):
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")


# made without source text (make_dataclass), so --help can only come from the fields themselves
Config = dataclasses.make_dataclass("Config", [
    ("rate", float, cli.opt(0.5, "how fast, 100% at most", "speed")),
    ("kind", str, cli.opt("x", "which kind", choices=("x", "y"))),
    ("flag", bool, cli.opt(False, "a switch", "other")),
    ("inner", Inner, cli.nested(Inner, "in")),
    ("name", str, cli.opt("", "a name"))])


def test_key_value_and_key_equals_value_and_bool_flags():
    assert cli.parse(Config, []) == Config()
    a = cli.parse(Config, ["--rate=0.25", "--kind", "y", "--flag", "--in_depth=7", "--name", "two words"])
    b = cli.parse(Config, ["--rate", "0.25", "--kind=y", "--flag=true", "--in_depth", "7", "--name=two words"])
    assert a == b == Config(rate=0.25, kind="y", flag=True, inner=Inner(depth=7), name="two words")
    assert cli.parse(Config, ["--flag=false"]).flag is False and cli.parse(Config, ["--flag=1"]).flag is True


def test_errors_are_one_line_usage_errors():
    for argv, words in [(["--nope=1"], "unrecognized arguments: --nope=1"),
                        (["--rate=fast"], "--rate: invalid float value: 'fast'"),
                        (["--kind=z"], "--kind: invalid choice: 'z'"), (["--flag=maybe"], "true or false"),
                        (["--in_depth=-1"], "^--in_depth must be >= 0"), (["--ra=1"], "unrecognized")]:
        with pytest.raises(cli.UsageError, match=words) as e:  # --ra: no abbreviations
            cli.parse(Config, argv, prog="x.py")
        assert "\n" not in str(e.value), argv
    with pytest.raises(cli.UsageError, match="--kind=z is not allowed"):  # a config made in code
        cli.check_choices(Config(kind="z"))


def test_help_lists_every_option_with_its_help_and_default_by_section(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(Config, ["--help"], prog="x.py")
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ["--rate FLOAT how fast, 100% at most (default: 0.5)", "which kind (default: 'x')",
                   "--flag [BOOL] a switch (default: False)", "--in_depth INT Inner.depth (default: 3)",
                   "--in_mode STR Inner.mode (default: 'a')", "a name (default: '')"]:
        assert needle in text, needle
    assert text.index("speed:") < text.index("which kind") < text.index("other:") < text.index("Inner.depth")


def test_command_line_is_the_inverse_of_parse():
    assert cli.command_line(Config(), "x.py") == "python x.py"
    cfg = Config(rate=0.25, flag=True, inner=Inner(mode="b"), name="two words")
    line = cli.command_line(cfg, "x.py")
    assert line == "python x.py --rate=0.25 --flag --in_mode=b '--name=two words'"
    import shlex
    assert cli.parse(Config, shlex.split(line)[2:]) == cfg
