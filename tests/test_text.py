"""segformer.text.fmt: the one number formatter of messages and tables."""

from segformer.text import fmt


def test_fmt():
    assert fmt(None) == "-"
    assert fmt(0.123456789) == "0.1235" and fmt(0.123456789, 6) == "0.123457"
    assert fmt(1e-7, 6) == f"{1e-7:g}" and fmt(1234567.0) == "1.235e+06"
    assert fmt(3) == "3" and fmt(True) == "True" and fmt("adamw") == "adamw"


def test_evaluate_table_aligns_wide_class_names():
    """Evaluate's per-class table lines up class names in CJK characters (two columns each on a
    terminal); padding by character count shifted every bar after them."""
    from segformer.engine.metrics import Scores
    from segformer.engine.report import format_tables
    from segformer.text import width

    scores = Scores(miou=0.375, macc=0.375, aacc=0.5, iou=(0.5, 0.25), acc=(0.5, 0.25))
    table = format_tables(scores, ["道路", "background"]).split("Summary")[0].strip().splitlines()
    assert len({width(line) for line in table}) == 1, table
    assert width("道路") == 4 and width("é") == 1 and width("e\u0301") == 1
