"""Headless Chromium for the report tests: screenshots, and layout measured by a script.

The report itself has no script; :func:`measure` adds one to a copy, which reads
every SVG's and text's box (transforms applied) after layout and writes them into
the page as JSON, and Chromium's ``--dump-dom`` hands the page back.
"""

from __future__ import annotations

import html as html_lib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]

_MEASURE = """<script>
(() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {l: r.left + scrollX, t: r.top + scrollY, r: r.right + scrollX,
            b: r.bottom + scrollY}; };
  const out = {svgs: [], sections: []};
  for (const s of document.querySelectorAll('svg')) {
    out.svgs.push({cls: s.getAttribute('class'), scale: s.dataset.scale || null,
      label: s.getAttribute('aria-label'), box: box(s),
      texts: [...s.querySelectorAll('text')].map(t => ({text: t.textContent,
        cls: t.getAttribute('class'), rotated: t.hasAttribute('transform'), box: box(t)})),
      rects: [...s.querySelectorAll('rect[class]')].map(r => ({cls: r.getAttribute('class'),
        title: (r.querySelector('title') || {}).textContent || '', box: box(r)}))});
  }
  for (const sec of document.querySelectorAll('section')) {
    const head = sec.querySelector('table.headline');
    out.sections.push({id: sec.id, svg_bottoms: [...sec.querySelectorAll('svg')].map(
      s => box(s).b), headline_top: head ? box(head).t : null});
  }
  const pre = document.createElement('pre');
  pre.id = 'measured';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed for the HTML report test: install Debian's "
                    "chromium package (apt-get install chromium), as scripts/test does")
    return path


def measure(html: str, tmp: Path) -> dict[str, Any]:
    """Boxes of every SVG, its texts and its classed rects, and each section's plot
    bottoms and headline-table top, in page pixels, as Chromium lays ``html`` out."""
    page = tmp / "measure.html"
    page.write_text(html.replace("</body>", _MEASURE + "</body>"))
    dom = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}",
                          "--window-size=1100,900", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    start = dom.index('<pre id="measured">') + len('<pre id="measured">')
    text = dom[start:dom.index("</pre>", start)]
    doc: dict[str, Any] = json.loads(html_lib.unescape(text))
    return doc


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    """A measured box (``l``, ``r``, ``t``, ``b``) within another, half a pixel spared."""
    return (inner["l"] >= outer["l"] - 0.5 and inner["r"] <= outer["r"] + 0.5
            and inner["t"] >= outer["t"] - 0.5 and inner["b"] <= outer["b"] + 0.5)


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    """Two measured boxes share more than half a pixel each way."""
    return min(a["r"], b["r"]) - max(a["l"], b["l"]) > 0.5 and \
        min(a["b"], b["b"]) - max(a["t"], b["t"]) > 0.5
