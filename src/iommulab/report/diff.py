"""``iommulab diff A.json B.json``: two JSON reports side by side (model's own tool).

Both files must be ``iommulab.report`` documents of one schema version; each is
checked against that version's schema (required fields, their JSON types, no
unknown fields, headline values numbers or strings) before anything is compared.
The comparison lists the parameters that differ, every headline key with its
value in A and in B, the absolute change ``B - A`` and the relative change
``(B - A) / |A|`` of numbers, the keys only one side has, and the host times.
A file that cannot be read or is not such a report exits 3 (two valid reports of
different versions, or an output file that cannot be written, exit 2), each with
one line naming the file and what is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..scenarios.base import FileError, UsageError
from .json_report import REPORT_SCHEMA, REPORT_VERSIONS, load_schema
from .text import format_table

__all__ = ["DIFF_SCHEMA", "HELP", "compare", "configure", "load_report", "render_diff", "run"]

DIFF_SCHEMA = "iommulab.report-diff"
DIFF_VERSION = 1

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),)}


def _is(value: Any, kind: str | list[str]) -> bool:
    kinds = [kind] if isinstance(kind, str) else kind
    for k in kinds:
        if isinstance(value, _JSON_TYPES[k]) and not (
                isinstance(value, bool) and k in ("integer", "number")):
            return True
    return False


def _check(path: str, doc: dict[str, Any], schema: dict[str, Any]) -> None:
    """The top level of ``doc`` against ``schema``: required fields, each field's type,
    const and enum, no unknown fields, and the headline's value types."""
    props: dict[str, Any] = schema["properties"]
    missing = [k for k in schema["required"] if k not in doc]
    if missing:
        raise FileError(f"{path}: not a valid report: no {', '.join(missing)}")
    unknown = sorted(set(doc) - set(props))
    if unknown:
        raise FileError(f"{path}: not a valid report: unknown field {', '.join(unknown)}")
    for key, rule in props.items():
        value = doc[key]
        kinds = rule.get("type") or [k for alt in rule.get("oneOf", []) for k in
                                     ([alt["type"]] if isinstance(alt.get("type"), str)
                                      else alt.get("type", []))]
        if kinds and not _is(value, kinds):
            raise FileError(f"{path}: not a valid report: {key} is {type(value).__name__}, "
                             f"not {kinds if isinstance(kinds, str) else ' or '.join(kinds)}")
        if "const" in rule and value != rule["const"]:
            raise FileError(f"{path}: not a valid report: {key} is {value!r}, not "
                             f"{rule['const']!r}")
        if "enum" in rule and value not in rule["enum"]:
            raise FileError(f"{path}: not a valid report: {key} {value!r} is not one of "
                             f"{', '.join(map(str, rule['enum']))}")
    for key, value in doc["headline"].items():
        if not _is(value, ["integer", "number", "string"]):
            raise FileError(f"{path}: not a valid report: headline {key} is "
                             f"{type(value).__name__}, not a number or a string")


def load_report(path: str) -> dict[str, Any]:
    """The report in ``path``, checked; :class:`FileError` names what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FileError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FileError(f"{path}: not a JSON report (not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileError(f"{path}: not JSON: {e.msg} at line {e.lineno} column "
                         f"{e.colno}") from None
    if not isinstance(doc, dict) or doc.get("schema") != REPORT_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise FileError(f"{path}: not an {REPORT_SCHEMA} document (schema: {got!r})")
    version = doc.get("version")
    if version not in REPORT_VERSIONS or isinstance(version, bool):
        raise FileError(f"{path}: {REPORT_SCHEMA} version {version!r}; this iommulab reads "
                         f"versions {', '.join(map(str, REPORT_VERSIONS))}")
    _check(path, doc, load_schema(version))
    return doc


def _change(a: Any, b: Any) -> tuple[float | int | None, float | None]:
    """(B - A, (B - A) / |A|) of two numbers; (None, None) otherwise; relative None at A=0."""
    if not (_is(a, "number") and _is(b, "number")):
        return None, None
    delta = b - a
    return delta, (delta / abs(a) if a else None)


def _row(key: str, a: Any, b: Any, in_a: bool, in_b: bool) -> dict[str, Any]:
    delta, rel = _change(a, b) if in_a and in_b else (None, None)
    status = ("only in A" if not in_b else "only in B" if not in_a
              else "same" if a == b else "changed")
    return {"key": key, "a": a if in_a else None, "b": b if in_b else None,
            "change": delta, "relative": rel, "status": status}


def _side(path: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"file": path, **{k: doc[k] for k in ("kind", "name", "title", "platform", "seed",
                                                  "quick", "iommulab", "version")}}


def compare(a: dict[str, Any], b: dict[str, Any], a_path: str = "A",
            b_path: str = "B") -> dict[str, Any]:
    """The comparison of two loaded reports of one version (``iommulab.report-diff``)."""
    if a["version"] != b["version"]:
        raise UsageError(f"{a_path} is {REPORT_SCHEMA} version {a['version']}, {b_path} "
                         f"version {b['version']}: compare reports of one version (run the "
                         "older one again with this iommulab)")

    def rows(x: dict[str, Any], y: dict[str, Any]) -> list[dict[str, Any]]:
        keys = list(x) + [k for k in y if k not in x]
        return [_row(k, x.get(k), y.get(k), k in x, k in y) for k in keys]

    headline = rows(a["headline"], b["headline"])
    params = [r for r in rows(a["params"], b["params"]) if r["status"] != "same"]
    count = {s: sum(1 for r in headline if r["status"] == s)
             for s in ("changed", "same", "only in A", "only in B")}
    return {
        "schema": DIFF_SCHEMA, "version": DIFF_VERSION,
        "a": _side(a_path, a), "b": _side(b_path, b),
        "params": params, "headline": headline,
        "only_a": [r["key"] for r in headline if r["status"] == "only in A"],
        "only_b": [r["key"] for r in headline if r["status"] == "only in B"],
        "summary": count,
        "host": rows(a["host"], b["host"]),
    }


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _delta_text(r: dict[str, Any]) -> tuple[str, str]:
    delta, rel = r["change"], r["relative"]
    if delta is None:
        return ("", "") if r["status"] != "changed" else ("changed", "")
    d = f"{delta:+d}" if isinstance(delta, int) else f"{delta:+.6g}"
    if rel is None:
        return d, "" if delta == 0 else "from 0"
    if abs(rel) >= 10:
        return d, f"{r['b'] / r['a']:.3g}x"
    return d, f"{rel * 100:+.1f}%"


def render_diff(d: dict[str, Any], show_all: bool = False) -> str:
    """The comparison as terminal text: what differs (``show_all``: every key)."""
    out = []
    for tag in ("a", "b"):
        s = d[tag]
        out.append(f"{tag.upper()}: {s['file']}: {s['name']} on {s['platform']}, seed {s['seed']}"
                   f"{', quick' if s['quick'] else ''} (iommulab {s['iommulab']})")
    if (d["a"]["kind"], d["a"]["name"]) != (d["b"]["kind"], d["b"]["name"]):
        out.append(f"note: A is {d['a']['kind']} {d['a']['name']}, B is {d['b']['kind']} "
                   f"{d['b']['name']}: their headline keys are not meant to match")
    if d["params"]:
        out += ["", "parameters that differ:", format_table(
            ["parameter", "A", "B"], [[r["key"], _num(r["a"]), _num(r["b"])]
                                      for r in d["params"]], "lll")]
    c = d["summary"]
    out += ["", f"headline: {c['changed']} changed, {c['same']} the same, "
                f"{c['only in A']} only in A, {c['only in B']} only in B"]
    shown = [r for r in d["headline"] if show_all or r["status"] != "same"]
    if shown:
        out.append(format_table(["key", "A", "B", "change", "relative"], [
            [r["key"], _num(r["a"]), _num(r["b"]), *_delta_text(r)] for r in shown], "lrrrr"))
    if d["host"]:
        out += ["", "host times (seconds; they vary from run to run):", format_table(
            ["timer", "A", "B", "change", "relative"], [
                [r["key"], _num(r["a"]), _num(r["b"]), *_delta_text(r)] for r in d["host"]],
            "lrrrr")]
    return "\n".join(out)


#: the one-line help of ``iommulab diff``
HELP = ("compare two JSON reports: parameters, headline values side by side with absolute "
        "and relative change, keys only in one")


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``iommulab diff`` (registered in :mod:`iommulab.cli`)."""
    p.add_argument("a", metavar="A.json", help="a report written by run/replay --json "
                   "or exec --report")
    p.add_argument("b", metavar="B.json", help="the report to compare it with")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON (schema "
                   f"{DIFF_SCHEMA}); '-' writes it to standard output instead of the text")
    p.add_argument("--all", action="store_true", help="list the headline keys that did "
                   "not change too")


def run(args: argparse.Namespace) -> int:
    """``iommulab diff``: exit 0 when compared, 2 when a file cannot be used."""
    d = compare(load_report(args.a), load_report(args.b), args.a, args.b)
    doc = json.dumps(d, indent=1) + "\n"
    if args.json == "-":
        sys.stdout.write(doc)
        return 0
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(doc)
        except OSError as e:
            raise UsageError(f"{args.json}: cannot write: {e.strerror or e}") from None
    print(render_diff(d, args.all))
    return 0
