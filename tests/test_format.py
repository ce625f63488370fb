"""workspace/format.py: the one spelling of numbers and 95% intervals."""

from workspace.format import interval, num, pair, span, threshold, with_interval
from workspace.stats import Interval


def test_numbers_and_intervals_are_spelled_one_way():
    iv = Interval(0.41234, 0.5)
    assert num(0.5) == "0.500" and num(0.5, 2) == "0.50" and num(None) == "n/a" and num(None, missing="—") == "—"
    assert interval(iv) == "[0.412, 0.500]" and interval(None) == "" and interval(None, missing="n/a") == "n/a"
    assert interval(iv, lead=" ") == " [0.412, 0.500]" and interval(None, lead=" ") == ""
    assert with_interval(0.45, iv) == "0.450 [0.412, 0.500]" and with_interval(0.45, None) == "0.450"
    assert with_interval(None, iv) == "n/a"  # an interval without its point is not printed
    assert span(iv) == "0.41–0.50" and span(None) == ""
    assert pair(iv) == [0.41234, 0.5] and pair(None) is None
    assert threshold(0.98) == "0.98" and threshold(0.8) == "0.80" and threshold(0.975) == "0.975"
