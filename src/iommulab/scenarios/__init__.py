"""Built-in scenarios of ``iommulab run`` (lab): one small module each."""

from __future__ import annotations

import time

from . import (
    ddw,
    migration_dirty,
    msi_doorbell,
    nested_migration,
    noncoherent_flush,
    streaming_dma,
    vfio_hugepages,
)
from .base import (
    Param,
    Plot,
    Progress,
    RunContext,
    Scenario,
    ScenarioResult,
    Table,
    UsageError,
    check_host_memory,
    parse_params,
)

__all__ = [
    "SCENARIOS",
    "Param",
    "Plot",
    "Progress",
    "RunContext",
    "Scenario",
    "ScenarioResult",
    "Table",
    "UsageError",
    "check_host_memory",
    "parse_params",
    "run_scenario",
]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    vfio_hugepages.SCENARIO, migration_dirty.SCENARIO, msi_doorbell.SCENARIO,
    streaming_dma.SCENARIO, noncoherent_flush.SCENARIO, ddw.SCENARIO, nested_migration.SCENARIO)}


def run_scenario(name: str, *, platform: str | None = None, settings: tuple[str, ...] = (),
                 seed: int = 0, quick: bool = False, progress: Progress | None = None,
                 save_states: bool = False) -> ScenarioResult:
    """Run scenario ``name``: ``settings`` are ``key=value`` strings, ``platform`` one of
    the scenario's (default: its first). Raises :class:`UsageError` for bad names."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise UsageError(f"no scenario {name!r} (scenarios: {', '.join(SCENARIOS)})")
    platform = platform or scenario.platforms[0]
    if platform not in scenario.platforms:
        raise UsageError(scenario.platform_error(platform))
    try:
        params = parse_params(scenario.params, settings, quick, platform)
        if scenario.check is not None:
            scenario.check(params, platform)
    except UsageError as e:
        raise UsageError(f"{name}: {e} (bounds: iommulab run {name} --help)") from None
    ctx = RunContext(params, seed, platform, quick, progress or Progress(), save_states)
    start = time.perf_counter()
    try:
        result = scenario.run(ctx)
    finally:
        ctx.progress.close()
    result.host["wall_seconds"] = round(time.perf_counter() - start, 3)
    return result
