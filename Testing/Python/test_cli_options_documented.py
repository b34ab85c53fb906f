"""The README's option table of ``analyze`` and the command-line parser describe the same options.

The table (README "Command line") is what users read; ``--help`` is what the
parser was built with. Catches: an option added, renamed or dropped on one side
only, a metavar or a list of choices that differs from what the README shows,
and a default the README states wrongly.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from ImplantBoneContactLib.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
# the options every analysis run has, documented in the text above the table instead
IN_THE_TEXT = {"--ct", "--model", "--out"}
ROW = re.compile(r"^\| `(?P<option>--[a-z-]+)(?: (?P<placeholder>[^`]+))?` \|(?P<default>[^|]*)\|")


def _readme_rows() -> dict[str, tuple[str | None, str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Command line")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| option | default | meaning |"))
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        m = ROW.match(line)
        assert m, f"README option row not understood: {line[:80]}"
        rows[m["option"]] = (m["placeholder"], m["default"].strip())
    return rows


def _analyze_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices["analyze"]._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)}


# The parser is built inside each test (not at import), so that mutation testing sees which tests use it.
README_ROWS = _readme_rows()


def test_the_readme_table_lists_every_analyze_option_and_no_other():
    assert set(README_ROWS) == set(_analyze_options()) - IN_THE_TEXT


@pytest.mark.parametrize("option", sorted(README_ROWS))
def test_readme_placeholder_is_the_parsers_metavar_or_choices(option):
    """``--tip-length MM`` in the README is metavar MM; ``--side left|right`` lists the choices; a flag has none;
    an option with neither shows its destination in capitals (argparse's own placeholder)."""
    placeholder, _ = README_ROWS[option]
    action = _analyze_options()[option]
    if action.nargs == 0:  # a flag
        assert placeholder is None
    elif action.choices:
        assert placeholder is not None and set(placeholder.split("\\|")) == {str(c) for c in action.choices}
        assert action.metavar is None  # argparse shows the choices
    else:
        assert placeholder == (action.metavar or action.dest.upper())


# The README's default column for the options whose default is a value the parser holds.
NUMERIC_OR_NAMED_DEFAULTS = {
    "--remesh": "fast", "--points": 10000, "--sampling": "trilinear", "--offset": 0.0, "--metal-aware": "auto",
    "--profile-aggregate": "max", "--classes": "default", "--metal-hu": 2500.0, "--tip-length": 10.0,
    "--zone-scheme": "sector", "--zone-reference": "implant",
}


@pytest.mark.parametrize("option, value", sorted(NUMERIC_OR_NAMED_DEFAULTS.items()))
def test_readme_default_is_the_parsers_default(option, value):
    _, default = README_ROWS[option]
    assert default.strip("`") == str(value).removesuffix(".0")
    assert _analyze_options()[option].default == value


def test_options_without_a_value_default_to_none_or_false():
    """The rest of the table says "none", "automatic", "auto", "from the file", "the only one", "thirds" or
    nothing: the parser leaves them None (flags False), and the library decides."""
    options = _analyze_options()
    for option, (_, default) in README_ROWS.items():
        if option in NUMERIC_OR_NAMED_DEFAULTS:
            continue
        expected = False if options[option].nargs == 0 else None
        assert options[option].default is expected, (option, default)


def test_calibration_register_and_metal_aware_reach_the_parameters(tmp_path):
    """The options added with density calibration, registration and the metal-aware walk are passed on;
    a namespace without the first two (another subcommand's) gives their defaults."""
    from ImplantBoneContactLib.cli import parameters_from_args

    cal = tmp_path / "cal.json"
    cal.write_text('{"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.2, "intercept_hu": -5.0}', encoding="utf-8")
    base = ["analyze", "--ct", "c", "--model", "m", "--out", "o"]
    p = parameters_from_args(build_parser().parse_args(base + ["--calibration", str(cal), "--register",
                                                              "--metal-aware", "off"]))
    assert (p.calibration, p.register, p.metal_aware) == (str(cal), True, "off")
    args = build_parser().parse_args(base)
    q = parameters_from_args(args)
    assert (q.calibration, q.register, q.metal_aware) == (None, False, "auto")
    del args.calibration, args.register
    r = parameters_from_args(args)
    assert (r.calibration, r.register) == (None, False)


def test_every_subcommand_is_listed_in_the_help():
    """argparse lists a subcommand in ``--help`` only when it was added with a help text."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(c.dest for c in sub._choices_actions) == sorted(sub.choices)
    assert all(c.help for c in sub._choices_actions)
