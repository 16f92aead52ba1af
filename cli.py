"""
The command line of every script here: argparse whose errors are one line and exit status 2, and the
options of a config dataclass generated from its fields, each of which carries its own help.

    @dataclass
    class Config:
        lr: float = opt(4e-3, "peak learning rate", section="optimization")

    cfg = parse(Config, ["--lr", "1e-3"], prog="train.py")   # --lr=1e-3 works too; --help lists every field
    command_line(cfg, "train.py")                            # 'python train.py --lr=0.001': the way back

argparse and the standard library only (no torch), so the data script speaks the same way.
"""

import argparse
import dataclasses
import re
import shlex


class UsageError(ValueError):
    """A problem the user fixes by changing a flag or a file. Every script of this project answers it the
    same way: one line, "<script>: error: ...", and exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError instead of a usage block, for every script of this project."""

    def error(self, message):
        raise UsageError(f"{message}; see python {self.prog} --help")


# ---- config fields that carry their help ----


def opt(default, help, section=None, choices=None):
    """A dataclass field with its --help text. section opens a group of --help that runs until the next
    field that opens one; choices, if given, are the only values allowed."""
    return dataclasses.field(default=default, metadata={"help": help, "section": section, "choices": choices})


def nested(cls, prefix, section=None):
    """A field holding a config of its own (cls), whose fields are set as --<prefix>_<field>."""
    return dataclasses.field(default_factory=cls, metadata={"prefix": prefix, "section": section})


def parse_bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"takes true or false, got {text!r}")


# ---- parsing, and the way back ----


def add_option(group, name, dest, kind, default, help, choices):
    # a bool is a flag that also takes a value: --llr, --llr=true, --llr=false
    kw = dict(type=parse_bool, nargs="?", const=True, metavar="BOOL") if kind is bool else dict(type=kind)
    if kind is not bool and not choices:
        kw["metavar"] = kind.__name__.upper()
    # SUPPRESS: an option not given stays out of the result, so the dataclass's default applies
    group.add_argument(f"--{name}", dest=dest, default=argparse.SUPPRESS, choices=choices,
                       help=f"{help} (default: {default!r})".replace("%", "%%"), **kw)


def build_parser(cls, **kw):
    """An option for every field of cls, and for every field of its nested configs, grouped by section."""
    p = Parser(formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False, **kw)
    group = p
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("section"):
            group = p.add_argument_group(meta["section"])
        if "prefix" in meta:  # --llr_interval sets cfg.llr_config.interval
            sub = f.default_factory()
            for g in dataclasses.fields(sub):
                name = f"{type(sub).__name__}.{g.name}"  # the generic help, where none is written
                help = g.metadata.get("help", name)
                add_option(group, f"{meta['prefix']}_{g.name}", f"{f.name}.{g.name}", g.type,
                           getattr(sub, g.name), help, g.metadata.get("choices"))
        else:
            add_option(group, f.name, f.name, f.type, f.default, meta.get("help", ""), meta.get("choices"))
    return p


def parse(cls, argv, **kw):
    """The config of a command line: cls with the options given, every other field at its default."""
    given = vars(build_parser(cls, **kw).parse_args(argv))
    top = {k: v for k, v in given.items() if "." not in k}
    for f in dataclasses.fields(cls):
        if "prefix" in f.metadata:
            sub = {k.split(".")[1]: v for k, v in given.items() if k.startswith(f.name + ".")}
            try:  # the nested config checks its own values
                top[f.name] = f.default_factory(**sub)
            except ValueError as e:  # its message names its fields: name the options that set them
                flag = {g.name: f"--{f.metadata['prefix']}_{g.name}"
                        for g in dataclasses.fields(f.default_factory)}
                raise UsageError(re.sub(r"\w+", lambda m: flag.get(m[0], m[0]), str(e))) from None
    return cls(**top)


def check_choices(cfg):
    """For a config made in code, not parsed: the fields with choices hold one of them."""
    for f in dataclasses.fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise UsageError(f"--{f.name}={getattr(cfg, f.name)} is not allowed; "
                             f"choose one of {', '.join(allowed)}")


def command_line(cfg, script):
    """The inverse of parse: the command that makes cfg, naming only the settings off their defaults."""
    args, default = [], type(cfg)()
    for f in dataclasses.fields(cfg):
        value, was = getattr(cfg, f.name), getattr(default, f.name)
        if "prefix" in f.metadata:
            args += [f"--{f.metadata['prefix']}_{g.name}={getattr(value, g.name)}"
                     for g in dataclasses.fields(value) if getattr(value, g.name) != getattr(was, g.name)]
        elif value != was:
            args.append(f"--{f.name}" if value is True else f"--{f.name}={value}")
    return shlex.join(["python", script, *args])
