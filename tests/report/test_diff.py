"""``iommulab diff``: two real reports side by side, and files it cannot use (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iommulab.cli import main


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """streaming-dma at 300 and 600 packets, ddw with and without two offers, a replay."""
    d = tmp_path_factory.mktemp("reports")
    runs = {"s300": ["run", "streaming-dma", "--quick"],
            "s600": ["run", "streaming-dma", "--quick", "--set", "packets=600"],
            "ddw5": ["run", "ddw", "--quick"],
            "ddw3": ["run", "ddw", "--quick", "--set", "offers=qemu,one-window,small-block",
                     "--set", "rams=8G,64G"],
            "ath12k": ["replay", str(Path(__file__).parents[1] / "trace" / "fixtures" /
                                     "ath12k_use_after_unmap.txt")]}
    out = {}
    for name, argv in runs.items():
        out[name] = d / f"{name}.json"
        assert main([*argv, "--no-progress", "--json", str(out[name])]) == 0
    return out


def _diff(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["diff", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _load(p: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(p.read_text())
    return doc


def test_changed_values_with_absolute_and_relative_change(
        reports: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = reports["s300"], reports["s600"]
    rc, out, err = _diff(capsys, str(a), str(b))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"A: {a}: streaming-dma on arm64-smmuv3, seed 0, quick")
    assert any(line.split() == ["packets", "300", "600"] for line in lines)
    ha, hb = _load(a)["headline"], _load(b)["headline"]
    changed = [k for k in ha if ha[k] != hb[k]]
    assert changed and f"headline: {len(changed)} changed, {len(ha) - len(changed)} the same" \
        in out
    syncs = next(line for line in lines if line.startswith("strict.iotlb_syncs "))
    assert syncs.split() == ["strict.iotlb_syncs", "300", "600", "+300", "+100.0%"]
    # --json -: the same comparison as JSON on standard output, nothing else
    rc, out, _ = _diff(capsys, str(a), str(b), "--json", "-")
    d = json.loads(out)
    assert d["schema"] == "iommulab.report-diff"
    rows = {r["key"]: r for r in d["headline"]}
    assert {k for k, r in rows.items() if r["status"] == "changed"} == set(changed)
    for k in changed:
        if isinstance(ha[k], int | float) and ha[k]:
            assert rows[k]["change"] == pytest.approx(hb[k] - ha[k])
            assert rows[k]["relative"] == pytest.approx((hb[k] - ha[k]) / abs(ha[k]))
    assert d["params"] == [{"key": "packets", "a": 300, "b": 600, "change": 300,
                            "relative": 1.0, "status": "changed"}]
    assert d["only_a"] == d["only_b"] == []


def test_keys_only_in_one_report(reports: dict[str, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _diff(capsys, str(reports["ddw5"]), str(reports["ddw3"]), "--json", "-")
    d = json.loads(out)
    assert rc == 0
    assert d["only_a"] == [f"8G.{o}.{k}" for o in ("qemu-before-7.1", "one-window-in-use")
                           for k in ("mode", "dma_ok", "put_tce_indirect")]
    assert [k for k in d["only_b"] if k.startswith("64G.qemu.")] == [
        "64G.qemu.mode", "64G.qemu.dma_ok", "64G.qemu.put_tce_indirect"]
    assert d["summary"]["only in A"] == 6 and d["summary"]["only in B"] == 9
    rc, out, _ = _diff(capsys, str(reports["ddw5"]), str(reports["ddw3"]))
    row = next(line for line in out.splitlines()
               if line.startswith("8G.qemu-before-7.1.put_tce_indirect"))
    assert row.split() == ["8G.qemu-before-7.1.put_tce_indirect", "256", "-"]
    # --json FILE: text on stdout and the same document in the file
    target = reports["ddw5"].parent / "d.json"
    rc, out2, _ = _diff(capsys, str(reports["ddw5"]), str(reports["ddw3"]), "--json",
                        str(target))
    assert out2 == out and json.loads(target.read_text()) == d


def test_a_report_against_itself_and_a_replay_against_a_scenario(
        reports: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    p = str(reports["ath12k"])
    rc, out, _ = _diff(capsys, p, p)
    n = len(_load(reports["ath12k"])["headline"])
    assert rc == 0 and f"headline: 0 changed, {n} the same, 0 only in A, 0 only in B" in out
    rc, out, _ = _diff(capsys, p, p, "--all")
    assert "0000:c2:00.0.faults_agreed" in out
    rc, out, _ = _diff(capsys, p, str(reports["ddw5"]))
    assert rc == 0 and "note: A is replay" in out


def _bad(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def test_files_it_cannot_use_exit_3_naming_the_file(
        reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(reports["s300"])
    doc = _load(reports["s300"])
    v1 = {k: v for k, v in doc.items() if k != "timeline"} | {"version": 1}
    cases = {
        str(tmp_path / "missing.json"): "cannot read: No such file or directory",
        str(tmp_path): "cannot read: Is a directory",
        _bad(tmp_path, "trunc.json", reports["s300"].read_text()[:200]): "not JSON: ",
        _bad(tmp_path, "list.json", "[1, 2]"): "not an iommulab.report document",
        _bad(tmp_path, "state.json", '{"schema": "iommulab.domain-state"}'):
            "not an iommulab.report document (schema: 'iommulab.domain-state')",
        _bad(tmp_path, "v9.json", json.dumps(doc | {"version": 9})):
            "iommulab.report version 9; this iommulab reads versions 1, 2",
        _bad(tmp_path, "nohead.json", json.dumps({k: v for k, v in doc.items()
                                                  if k != "headline"})):
            "not a valid report: no headline",
        _bad(tmp_path, "extra.json", json.dumps(doc | {"surprise": 1})):
            "not a valid report: unknown field surprise",
        _bad(tmp_path, "seed.json", json.dumps(doc | {"seed": "zero"})):
            "not a valid report: seed is str, not integer",
        _bad(tmp_path, "head.json", json.dumps(doc | {"headline": {"x": [1]}})):
            "not a valid report: headline x is list, not a number or a string",
        _bad(tmp_path, "v1.json", json.dumps(v1)):
            "compare reports of one version"}
    for path, message in cases.items():
        for argv in ((good, path), (path, good)):
            rc, out, err = _diff(capsys, *argv)
            if path.endswith("v1.json"):  # valid alone; of another version than the other
                assert rc == 2 and "compare reports of one version" in err
                continue
            assert (rc, out) == (3, ""), path
            assert err.startswith(f"iommulab diff: {path}: {message}"), err
            assert len(err.strip().splitlines()) == 1
    # an output file that cannot be written
    rc, _, err = _diff(capsys, good, good, "--json", str(tmp_path / "no" / "d.json"))
    assert rc == 2 and "cannot write: No such file or directory" in err
