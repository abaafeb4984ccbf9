"""The ftrace parser on real lines from public reports, constructed lines of every dma
format, and malformed, truncated, wrapped and quoted input."""

from __future__ import annotations

from pathlib import Path

import pytest

from iommulab.trace import TraceError, parse_trace, parse_trace_file

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_ath12k_report_hard_wrapped_by_mail() -> None:
    t = parse_trace(fixture("ath12k_use_after_unmap.txt"))
    assert [e.name for e in t.events] == ["map", "dma_alloc", "dma_free", "unmap",
                                         "io_page_fault"]
    assert t.joined_lines == 5  # every record was wrapped once
    m, alloc, free, unmap, fault = t.events
    assert (m.comm, m.pid, m.cpu, m.ts) == ("(udev-worker)", 532, 10, 4.878076)
    assert m.fields == {"iova": 0xFE980000, "end": 0xFEA00000, "paddr": 0x10EC80000,
                        "size": 524288}
    assert m.fmt == "map (range, v5.17+)"
    assert alloc.fields["device"] == "0000:c2:00.0" and alloc.fields["gfp"] == "GFP_KERNEL"
    assert alloc.fmt == "dma alloc (v6.12.0, no dir)" and "dir" not in alloc.fields
    assert free.fields["dma_addr"] == 0xFE980000 and free.fields["attrs"] == ""
    assert unmap.fields["unmapped_size"] == 524288 and unmap.task == "kworker/u64:0-12"
    assert fault.fields == {"driver": "ath12k_pci", "device": "0000:c2:00.0",
                            "iova": 0xFE980000, "flags": 1}
    assert fault.line == 19  # where the record starts
    # the kernel-log line between the records is listed, not dropped
    assert [(u.line, u.reason) for u in t.unparsed] == [(23, "not an ftrace record")]


def test_quoted_fault_burst() -> None:
    t = parse_trace(fixture("amdvi_fault_burst.txt"))
    assert [e.fields["iova"] for e in t.events] == [
        0x91482640, 0x91482650, 0x91482660, 0x91482670, 0x91482680, 0x914826A0]
    assert {e.fields["driver"] for e in t.events} == {"[drvname]"}
    assert {e.task for e in t.events} == {"irq/24-AMD-Vi-48"}
    assert [u.line for u in t.unparsed] == [4]  # the sentence before the lines


def test_high_iova_and_the_caret_line_under_it() -> None:
    t = parse_trace(fixture("i915_high_iova.txt"))
    (m,) = t.events
    assert m.fields["iova"] == 0x3FFF_FFC0_0000 and m.fields["end"] == 1 << 46
    assert m.cpu == 4 and m.comm == "gem_exec_gttfil"
    assert [u.text for u in t.unparsed] == ["^" * 19]


def test_old_and_dev_formats_without_framing() -> None:
    t = parse_trace(fixture("ufs_old_format.txt"))
    assert [e.fmt for e in t.events] == ["map (before v5.17)", "unmap (before v5.17)",
                                        "map (dev=, unmerged patch)",
                                        "unmap (dev=, unmerged patch)"]
    assert t.events[0].fields == {"iova": 0xFFFF36000, "paddr": 0x1164D8000, "size": 4096}
    assert t.events[2].fields["device"] == "1d84000.ufshc"
    assert all(e.pid == -1 and e.ts == -1.0 for e in t.events)
    assert [u.text for u in t.unparsed] == ["Before:", "After:"]


def test_every_dma_format() -> None:
    t = parse_trace(fixture("dma_formats_constructed.txt"))
    assert not t.unparsed and t.header_lines == 9
    by = {e.name + ("+" if e.fields.get("truncated") else ""): e for e in t.events}
    assert by["dma_map_page"].fields["phys_addr"] == 0x12345000
    assert by["dma_unmap_page"].fields["attrs"] == "SKIP_CPU_SYNC"
    assert by["dma_map_phys"].fields["attrs"] == "WEAK_ORDERING|SKIP_CPU_SYNC"
    assert by["dma_alloc"].fields["dir"] == "BIDIRECTIONAL"
    sg = by["dma_map_sg"]
    assert sg.fields["dma_addrs"] == [0xFFFB0000, 0xFFFB2000] and "nents" not in sg.fields
    trunc = by["dma_map_sg+"]
    assert (trunc.fields["nents"], trunc.fields["ents"], trunc.fields["nents_traced"]) == (
        300, 150, 128)
    assert by["dma_map_sg_err"].fields["err"] == -12
    assert by["dma_sync_sg_for_device"].fields["sizes"] == [0x2000]
    assert by["dma_unmap_sg"].fields["phys_addrs"] == [0x34567000, 0x34568000]
    assert by["add_device_to_group"].fields == {"group": 7, "device": "0000:02:00.0"}
    assert t.formats["dma_map_sg (counts)"] == 2
    assert t.formats["dma_map_sg (v6.12, no counts)"] == 1


def test_malformed_and_truncated_lines_are_listed_with_their_numbers() -> None:
    t = parse_trace(fixture("malformed.txt"))
    assert [e.name for e in t.events] == ["map", "unmap"]
    assert t.other_events == {"sched_switch": 1}
    got = [(u.line, u.reason.split(":")[0]) for u in t.unparsed]
    assert got == [(3, "map"), (4, "dma_map_phys"), (6, "unmap"), (9, "not an ftrace record")]
    assert "lines 6-7 read as one record" in t.unparsed[2].reason
    assert t.header_lines == 1 and t.lines == 9


def test_a_record_wrapped_inside_a_word_is_joined() -> None:
    lines = ["  a-1 [000] ..... 1.000000: unmap: IOMMU: iova=0x0000000000001000 - 0x00000000000",
             "02000 size=4096 unmapped_size=4096"]
    (ev,) = parse_trace(lines).events
    assert ev.fields["end"] == 0x2000


def test_tgid_column_and_tp_printk_lines() -> None:
    t = parse_trace([
        "  qemu-kvm-4575  (   4575) [008] .......   438.308516: map: IOMMU: iova=0x00000000000c"
        "0000 - 0x00000000000c1000 paddr=0x00000001a68c0000 size=4096",
        "[    4.878076] map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 "
        "paddr=0x0000000000003000 size=4096"])
    assert [(e.pid, e.cpu) for e in t.events] == [(4575, 8), (-1, -1)]
    assert t.events[1].ts == 4.878076


@pytest.mark.parametrize(("content", "message"), [
    (b"", "no iommu or dma trace event in 0 lines"),
    (b"hello\n", "no iommu or dma trace event in 1 lines; first unparsed line 1"),
    (b"\x00\x01binary", "a binary file"),
])
def test_unusable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(TraceError, match=f"^{path}: {message}"):
        parse_trace_file(path)


def test_missing_file_and_strict_mode(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.txt: cannot read"):
        parse_trace_file(tmp_path / "nope.txt")
    with pytest.raises(TraceError, match=r"malformed.txt:3: map: the fields"):
        parse_trace_file(FIXTURES / "malformed.txt", strict=True)
    assert len(parse_trace_file(FIXTURES / "malformed.txt").events) == 2
