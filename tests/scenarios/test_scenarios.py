"""Each built-in scenario in --quick mode: headline numbers, determinism, schema, bad input."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from iommulab.report.json_report import load_schema, report_document
from iommulab.scenarios import SCENARIOS, ScenarioResult, UsageError, run_scenario

_RESULTS: dict[str, ScenarioResult] = {}


def quick(name: str) -> ScenarioResult:
    """Each quick run once per session (they take a second or two each)."""
    if name not in _RESULTS:
        _RESULTS[name] = run_scenario(name, quick=True)
    return _RESULTS[name]


def numbers(name: str) -> dict[str, Any]:
    """The headline of the quick run of ``name``, loosely typed for comparisons."""
    return dict(quick(name).headline)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_follows_the_report_schema(name: str) -> None:
    doc = report_document(quick(name))
    jsonschema.validate(doc, load_schema())
    assert doc["kind"] == "scenario" and doc["quick"] is True and doc["tables"]
    assert doc["plots"] and all(p["categories"] for p in doc["plots"])


def test_vfio_hugepages_lands_where_the_backing_allows() -> None:
    h = numbers("vfio-hugepages")
    # 3G guest: [0, 0xa0000) and [0xc0000, 2M) are 4K (160 + 320 entries); the rest of
    # low RAM and the 1G at 4G are 2M blocks under THP, 1G pages where hugetlb-1G allows
    assert (h["thp.iopte_4K"], h["thp.iopte_2M"], h["thp.iopte_1G"]) == (480, 1535, 0)
    assert (h["hugetlb-1G.iopte_4K"], h["hugetlb-1G.iopte_2M"], h["hugetlb-1G.iopte_1G"]) == (
        480, 511, 2)
    assert h["fragmented.iopte_4K"] == ((3 << 30) - 0x20000) // 4096
    assert h["fragmented.iommu_map_calls"] > 1000 > h["thp.iommu_map_calls"]
    for backing in ("thp", "hugetlb-2M", "hugetlb-1G", "fragmented"):
        assert h[f"{backing}.locked_bytes"] == h[f"{backing}.pinned_bytes"] == (3 << 30) - 0x20000
        assert h[f"{backing}.pins_left"] == 0


def test_migration_dirty_split_tracks_pages_and_bbm0_faults() -> None:
    h = numbers("migration-dirty")
    assert h["upstream.resent_bytes"] > 10 * h["written_bytes"]  # whole 2M blocks
    for mode in ("split", "sync_fix"):
        for level in (0, 1, 2):
            key = f"{mode}_BBM{level}"
            assert h[f"{key}.blocks_split"] == h[f"{key}.blocks_merged"] == 32  # 64M / 2M
            assert h[f"{key}.frames_left"] == 0
            assert (h[f"{key}.transient_faults"] > 0) == (level == 0)
        assert h[f"{mode}_BBM0.resent_bytes"] <= h["written_bytes"]
    assert h["sync_fix_BBM2.missed_pages"] == 0 < h["split_BBM2.missed_pages"]
    assert h["sync_fix_BBM2.resent_bytes"] == h["written_bytes"]


def test_msi_doorbell_needs_a_cookie_and_shares_its_page() -> None:
    h = numbers("msi-doorbell")  # 2 devices, 4 MSIs each
    assert h["dma-domain.pages_mapped"] == 2  # one doorbell page per DMA domain
    assert h["vfio-cookie.pages_mapped"] == 1  # one page in the shared domain
    assert h["two-its.pages_mapped"] == 2
    for case in ("dma-domain", "vfio-cookie", "two-its", "identity"):
        assert h[f"{case}.delivered"] == h[f"{case}.sent"] == 8
        assert h[f"{case}.faults"] == h[f"{case}.wrong_id"] == h[f"{case}.refused"] == 0
    # 6.12 iommu_dma_prepare_msi: no iova_cookie, so the doorbell goes out untranslated
    assert (h["no-cookie.refused"], h["no-cookie.delivered"], h["no-cookie.faults"]) == (0, 0, 8)


def test_streaming_dma_strict_has_no_stale_window_and_lazy_fewer_invalidations() -> None:
    h = numbers("streaming-dma")
    assert h["strict.stale_pages_max"] == h["strict.stale_reads"] == 0
    assert h["lazy.stale_pages_max"] > 0 and h["lazy.stale_ns_max"] > 0
    assert h["strict.tlbi_per_page"] >= 1 > 0.1 > h["lazy.tlbi_per_page"]
    assert h["lazy.iotlb_hit_rate"] > h["strict.iotlb_hit_rate"]
    assert h["strict.iotlb_syncs"] == 300 and h["lazy.iotlb_syncs"] == 0


def test_noncoherent_flush_only_mainline_reads_stale_data() -> None:
    h = numbers("noncoherent-flush")
    assert h["none.stale_reads"] > 0 and h["none.unflushed_unpins"] > 0
    assert h["none.flush_pages"] == 0
    for policy in ("sticky", "count", "every"):
        assert h[f"{policy}.stale_reads"] == h[f"{policy}.unflushed_unpins"] == 0
        assert h[f"{policy}.flush_pages"] > 0
    assert h["fewest_pages_safe_policy"] in ("sticky", "count", "every")


def test_ddw_window_choice_by_offer() -> None:
    h = numbers("ddw")  # 8G of RAM
    assert h["8G.qemu.mode"] == "direct"
    assert h["8G.qemu.put_tce_indirect"] == 1  # QEMU 10: 512 TCEs of 16M
    # QEMU before 7.1: 64K TCEs, 512 a call
    assert h["8G.qemu-before-7.1.put_tce_indirect"] == (8 << 30 >> 16) // 512
    assert h["8G.one-window.mode"] == "direct"
    assert h["8G.one-window-in-use.mode"] == "refused"
    assert h["8G.small-block.mode"] == "dynamic"
    assert all(h[f"8G.{o}.dma_ok"] == 1 for o in ("qemu", "qemu-before-7.1", "one-window",
                                                  "one-window-in-use", "small-block"))


def test_the_same_seed_gives_the_same_report() -> None:
    def doc(seed: int) -> dict[str, object]:
        d = report_document(run_scenario("migration-dirty", quick=True, seed=seed,
                                         settings=("modes=upstream,split", "bbm_levels=1")))
        d.pop("host")
        return d

    assert doc(5) == doc(5)
    assert doc(5)["headline"] != doc(6)["headline"]


def test_settings_override_quick_defaults() -> None:
    r = run_scenario("streaming-dma", quick=True, settings=("packets=50", "modes=lazy"))
    assert r.params["packets"] == 50 and r.params["modes"] == ("lazy",)
    assert "strict.tlbi_per_page" not in r.headline
    assert r.param_text["packets"] == "50"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "nope"}, "no scenario 'nope'"),
    ({"name": "ddw", "platform": "x86-vtd"}, "ddw runs on ppc64-pseries, not x86-vtd"),
    ({"name": "ddw", "settings": ("ram=8G",)}, "--set ram: no such parameter"),
    ({"name": "ddw", "settings": ("offers=qemu,bogus",)}, "bogus is not one of"),
    ({"name": "ddw", "settings": ("rams",)}, "expected key=value"),
    ({"name": "streaming-dma", "settings": ("packets=many",)}, "--set packets=many"),
    ({"name": "streaming-dma", "settings": ("packets=0",)}, "0 is below the minimum 1"),
    ({"name": "streaming-dma", "settings": ("buffer_size=8192",)}, "above the maximum 4096"),
    ({"name": "migration-dirty", "settings": ("bbm_levels=3",)}, "3 is not one of 0, 1, 2"),
    ({"name": "vfio-hugepages", "settings": ("guest_ram=12K",)}, "--set guest_ram"),
])
def test_bad_names_and_values_are_usage_errors(kwargs: dict[str, object],
                                               message: str) -> None:
    name = kwargs.pop("name")
    assert isinstance(name, str)
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        run_scenario(name, quick=True, **kwargs)  # type: ignore[arg-type]
