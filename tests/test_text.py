"""segformer.text.fmt: the one number formatter of messages and tables."""

from segformer.text import fmt


def test_fmt():
    assert fmt(None) == "-"
    assert fmt(0.123456789) == "0.1235" and fmt(0.123456789, 6) == "0.123457"
    assert fmt(1e-7, 6) == f"{1e-7:g}" and fmt(1234567.0) == "1.235e+06"
    assert fmt(3) == "3" and fmt(True) == "True" and fmt("adamw") == "adamw"
