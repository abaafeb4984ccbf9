"""When a plot's axis is log scale, and its ticks."""

from __future__ import annotations

from iommulab.report.axes import LOG_SPAN, linear_ticks, log_ticks, plot_is_log, tick_label
from iommulab.scenarios import Plot


def _plot(values: list[float], log: bool | None = None) -> Plot:
    return Plot("t", "y", [str(i) for i in range(len(values))], {"s": values}, log=log)


def test_log_from_two_decades_of_positive_values() -> None:
    assert not plot_is_log(_plot([1.0, LOG_SPAN - 1]))
    assert plot_is_log(_plot([1.0, LOG_SPAN]))
    assert not plot_is_log(_plot([0.0, 0.0, 8.0]))  # zeros draw no bar on either scale
    assert not plot_is_log(_plot([]))
    assert plot_is_log(_plot([2.0, 3.0], log=True))  # the plot's own choice stands
    assert not plot_is_log(_plot([1.0, 1e6], log=False))


def test_ticks() -> None:
    assert log_ticks([1.0, 256.0]) == [0.1, 1.0, 10.0, 100.0, 1000.0]
    assert log_ticks([3.0, 1e9]) == [10.0 ** e for e in range(0, 10)]
    assert linear_ticks(8.0) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert linear_ticks(322.9) == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert linear_ticks(0.0) == [0.0, 1.0]
    assert [tick_label(v) for v in (0.1, 1000.0, 1.5e9, 3221094400.0)] == [
        "0.1", "1k", "1.5G", "3.22G"]
