"""The README is executable: every command and Python block in it runs here (issue 21).

Each fenced block of README.md is one test, found by parsing the file, so a section added
later is covered without a list here. A block's language tag says what it is:

- ``console``: a shell session. ``$ `` starts a command (a trailing ``\\`` continues it);
  the lines up to the next ``$ `` are its output, compared with what it prints (stdout
  and stderr together). ``...`` stands for any text, as in doctest; a number with a time
  unit (``0.4 s``, ``12 ms``, ``79 µs``) matches any number with that unit, since host
  timings change from run to run. A command shown without output is not compared, and
  must exit 0 unless the next command is ``echo $?`` (whose output then shows the status).
- ``sh`` (or ``bash``, ``shell``): commands only, one per line; each must exit 0.
- ``python``: a script. Its printed output is compared with a ``text`` block that follows
  it directly (nothing between the two blocks); with none, it must print nothing.
- ``pycon``: an interactive session, checked as doctest checks one (``...`` as above).
- ``text``: not run (an output block of the python block before it, a file tree).

Python and pycon blocks of one section (the text under one heading) share one fresh
interpreter and run in order, as a reader pastes them one after the other; each section
starts from nothing. Every block runs in a fresh temporary directory holding links to
the checkout's top-level files (so ``tests/...`` paths resolve and the files a command
writes land in the temporary directory), with this checkout's ``src`` first on the path
and ``iommulab`` on PATH running this checkout's code.

A fenced block without a tag, with another tag, or an indented code block fails, so
nothing in the README escapes the test by its form. The only commands not run are the
ones in SKIP (the install and test commands, each with its reason); a block whose
commands need a C compiler or the exec bridge this machine lacks is skipped with the
reason, as the exec tests are. In the prose, the files, ``iommulab.*`` names and
``iommulab`` subcommands and options that inline code names are checked to exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SESSION_LANGS = frozenset({"console", "shell-session"})
COMMAND_LANGS = frozenset({"sh", "bash", "shell"})
PYTHON_LANGS = frozenset({"python", "pycon"})
INERT_LANGS = frozenset({"text"})

# Commands the test does not run, each with its reason. Only the exact command is
# skipped; test_skip_list_is_current fails when an entry no longer appears in the README.
SKIP: dict[str, str] = {
    "pip install .": "the install step itself: the suite already runs with the package "
                     "installed, and installing into the running environment from a "
                     "test would change it under the other tests",
    "scripts/test": "the test command itself: it runs this whole suite (this test "
                    "included, so it would recurse) and installs system packages with "
                    "apt-get; CI runs it as .ci/run",
}

# Programs a command may need that a machine can lack; without them the block is
# skipped with the reason given (scripts/test installs them).
NEEDS: dict[str, str] = {
    "cc": "no C compiler on PATH (scripts/test installs gcc and libc6-dev)",
}

TIMING = re.compile(r"\d+(?:\.\d+)?(?= ?(?:s|ms|us|µs|ns)\b)")


@dataclass(frozen=True)
class Block:
    """One fenced block: its first line number (1-based, the fence), tag and body."""

    line: int
    lang: str
    text: str
    section: str
    section_line: int  # the line of the section's heading (0 before the first)
    follows: Block | None  # the fenced block right before this one, if only blanks part them

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'untagged'}"


def parse_blocks(markdown: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order, with the section each is in."""
    blocks: list[Block] = []
    section, section_line = "(top)", 0
    lines = markdown.splitlines()
    i = 0
    prev: Block | None = None
    last_end = -2  # index of the closing fence of the previous block
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(`{3,}|~{3,})\s*([^\s`]*)", line)
        if fence:
            mark = fence.group(1)
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not lines[j].startswith(mark):
                body.append(lines[j])
                j += 1
            between = lines[last_end + 1:i]
            adjacent = prev is not None and all(not s.strip() for s in between)
            block = Block(i + 1, fence.group(2), "\n".join(body) + "\n", section,
                          section_line, prev if adjacent else None)
            blocks.append(block)
            prev, last_end, i = block, j, j + 1
            continue
        if line.startswith("#"):
            section, section_line = line.lstrip("#").strip(), i + 1
        i += 1
    return blocks


def indented_code_lines(markdown: str) -> list[int]:
    """Line numbers where an indented (unfenced) code block starts, list items allowed for."""
    found: list[int] = []
    in_fence = False
    content_indent = 0  # the content column of the list item being continued, if any
    blank_before = True
    for n, line in enumerate(markdown.splitlines(), 1):
        if re.match(r"^(`{3,}|~{3,})", line):
            in_fence = not in_fence
            blank_before = False
            continue
        if in_fence:
            continue
        if not line.strip():
            blank_before = True
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = re.match(r"^(\s*)([-*+]|\d+[.)])\s+", line)
        if blank_before and indent >= content_indent + 4 and not item:
            found.append(n)
        if item:
            content_indent = len(item.group(0))
        elif indent == 0:
            content_indent = 0
        blank_before = False
    return found


def output_matches(expected: str, actual: str) -> bool:
    """``actual`` as ``expected`` shows it: ``...`` for any text, timings by unit only."""

    def norm(s: str) -> str:
        return "\n".join(line.rstrip() for line in s.strip("\n").splitlines())

    pattern = ""
    for k, piece in enumerate(norm(expected).split("...")):
        if k:
            pattern += ".*?"
        pos = 0
        for m in TIMING.finditer(piece):
            pattern += re.escape(piece[pos:m.start()]) + r"\d+(?:\.\d+)?"
            pos = m.end()
        pattern += re.escape(piece[pos:])
    return re.fullmatch(pattern, norm(actual), re.DOTALL) is not None


def session_commands(text: str) -> list[tuple[str, str]]:
    """(command, the output shown after it) for each ``$ `` command of a session."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            raise AssertionError(f"console block: output before any command: {line!r}")
        cmd = [line[2:]]
        while cmd[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd.append(lines[i])
        i += 1
        shown: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        out.append(("\n".join(cmd), "\n".join(shown)))
    return out


def script_commands(text: str) -> list[str]:
    """The commands of a ``sh`` block: one a line, ``\\`` continuing, comments dropped."""
    cmds: list[str] = []
    cur: list[str] = []
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur.append(line)
        if not line.endswith("\\"):
            cmds.append("\n".join(cur))
            cur = []
    if cur:
        cmds.append("\n".join(cur))
    return cmds


BLOCKS = parse_blocks(README.read_text())


def _blocks_of(langs: frozenset[str]) -> list[Block]:
    return [b for b in BLOCKS if b.lang in langs]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory that looks like the checkout for reading and is scratch for writing."""
    for entry in ROOT.iterdir():
        if entry.name not in {".git", "README.md"} and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "README.md").symlink_to(README)
    return tmp_path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment the README's reader has: ``iommulab`` and ``python3`` of this checkout."""
    bindir = tmp_path_factory.mktemp("bin")
    shim = bindir / "iommulab"
    # guarded as pip's console-script wrapper is: the worker processes of a sweep's
    # LocalCluster start by importing the main module (multiprocessing's spawn)
    shim.write_text(f"#!{sys.executable}\nimport sys\nfrom iommulab.cli import main\n"
                    "if __name__ == '__main__':\n    sys.exit(main())\n")
    shim.chmod(0o755)
    (bindir / "python3").symlink_to(sys.executable)
    e = dict(os.environ)
    e["PATH"] = f"{bindir}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"),
                                                  e.get("PYTHONPATH")) if p)
    e["COLUMNS"] = "200"
    e.pop("PYTHONSTARTUP", None)
    return e


def _bridge_missing() -> str | None:
    """Why ``iommulab exec`` cannot run here (the bridge tests skip for the same reasons)."""
    from iommulab.bridge import _landlock
    from tests.bridge.conftest import _seccomp_notify_works

    why = _seccomp_notify_works()
    if why is None and _landlock.landlock_abi() == 0:
        why = "Landlock is not enabled in this kernel: the bridge has no fence"
    return why


def _check_needs(commands: list[str]) -> None:
    for cmd in commands:
        prog = cmd.split()[0]
        if prog in NEEDS and shutil.which(prog) is None:
            pytest.skip(NEEDS[prog])
        if cmd.split()[:2] == ["iommulab", "exec"]:
            why = _bridge_missing()
            if why:
                pytest.skip(f"iommulab exec cannot run here: {why}")


def _run_shell(commands: list[str], cwd: Path, env: dict[str, str]) -> list[tuple[int, str]]:
    """Run the commands in one bash, in order; (status, output) of each.

    Each command's status is restored after the marker line, so ``echo $?`` shows it.
    """
    marker = "@@readme-command-done"
    script = ["exec 2>&1"]
    for n, cmd in enumerate(commands):
        script.append(f"{{ {cmd}\n}}\n__s=$?; printf '\\n{marker} {n} %d\\n' $__s; "
                      "(exit $__s)")
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    results: list[tuple[int, str]] = []
    rest = proc.stdout
    for n in range(len(commands)):
        m = re.search(rf"\n?{marker} {n} (\d+)\n", rest)
        assert m, f"command {commands[n]!r} never finished; output:\n{rest}"
        results.append((int(m.group(1)), rest[:m.start()]))
        rest = rest[m.end():]
    return results


def _shell_cases() -> list[Block]:
    return _blocks_of(SESSION_LANGS | COMMAND_LANGS)


def _command_failures(block: Block, cwd: Path, env: dict[str, str]) -> list[str]:
    """Run a console or sh block's commands in one bash; what went wrong."""
    if block.lang in SESSION_LANGS:
        pairs = session_commands(block.text)
    else:
        pairs = [(c, "") for c in script_commands(block.text)]
    pairs = [(c, shown) for c, shown in pairs if c not in SKIP]
    if not pairs:
        pytest.skip("; ".join(SKIP[c] for c in script_commands(block.text) if c in SKIP)
                    or "no commands")
    _check_needs([c for c, _ in pairs])
    results = _run_shell([c for c, _ in pairs], cwd, env)
    failures = []
    for k, ((cmd, shown), (status, out)) in enumerate(zip(pairs, results, strict=True)):
        where = f"README.md:{block.line}: $ {cmd}"
        echoed = k + 1 < len(pairs) and pairs[k + 1][0].strip() == "echo $?"
        if not echoed and status != 0:
            failures.append(f"{where}\nexited {status}:\n{out}")
        if shown.strip() and not output_matches(shown, out):
            failures.append(f"{where}\nthe README shows:\n{shown}\nthe command printed:\n"
                            f"{out}")
    return failures


@pytest.mark.parametrize("block", _shell_cases(), ids=lambda b: b.id)
def test_commands(block: Block, workdir: Path, env: dict[str, str]) -> None:
    failures = _command_failures(block, workdir, env)
    assert not failures, "\n".join(failures)


DRIVER = textwrap.dedent('''
    import contextlib, doctest, io, json, sys, traceback
    blocks = json.load(sys.stdin)
    real_stdout = sys.stdout
    globs = {"__name__": "__main__"}
    results = []
    for b in blocks:
        buf = io.StringIO()
        error = None
        if b["lang"] == "pycon":
            test = doctest.DocTestParser().get_doctest(
                b["text"], globs, f"README.md:{b['line']}", "README.md", b["line"])
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=buf.write, clear_globs=False)
            if runner.failures:
                error = buf.getvalue()
            out = ""
        else:
            code = compile("\\n" * b["line"] + b["text"], "README.md", "exec")
            try:
                with contextlib.redirect_stdout(buf):
                    exec(code, globs)
            except BaseException:
                error = traceback.format_exc()
            out = buf.getvalue()
        results.append({"line": b["line"], "error": error, "out": out})
        if error:
            break
    real_stdout.write(json.dumps(results))
''')


def _python_sections() -> list[list[Block]]:
    """The python and pycon blocks grouped by section, each group in README order."""
    groups: dict[int, list[Block]] = {}
    for b in _blocks_of(PYTHON_LANGS):
        groups.setdefault(b.section_line, []).append(b)
    return list(groups.values())


def _expected_output(block: Block, blocks: list[Block]) -> str | None:
    """The ``text`` block that directly follows a python block: what it prints."""
    for b in blocks:
        if b.follows is block and b.lang in INERT_LANGS:
            return b.text
    return None


def _python_failures(section: list[Block], blocks: list[Block], cwd: Path,
                     env: dict[str, str]) -> list[str]:
    """Run one section's python and pycon blocks in one fresh interpreter; what went wrong."""
    payload = json.dumps([{"line": b.line, "lang": b.lang, "text": b.text} for b in section])
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=payload, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return [proc.stderr]
    failures = []
    for b, r in zip(section, json.loads(proc.stdout), strict=False):
        if r["error"] is not None:
            failures.append(f"README.md:{b.line} ({b.section}):\n{r['error']}")
        elif b.lang == "python":
            shown = _expected_output(b, blocks)
            if not output_matches(shown or "", r["out"]):
                failures.append(f"README.md:{b.line}: the README shows:\n{shown}\n"
                                f"the block printed:\n{r['out']}")
    return failures


@pytest.mark.parametrize("section", _python_sections(),
                         ids=lambda bs: f"L{bs[0].line}-{bs[0].section[:40]}")
def test_python(section: list[Block], workdir: Path, env: dict[str, str]) -> None:
    failures = _python_failures(section, BLOCKS, workdir, env)
    assert not failures, "\n".join(failures)


def test_harness_catches_what_it_should(tmp_path: Path, env: dict[str, str]) -> None:
    """The runners on a small README: state shared in a section, outputs compared."""
    md = ("## S\n\n```python\nx = 6 * 7\nprint(x)\n```\n\n```text\n42\n```\n\n"
          "```pycon\n>>> x + 1\n43\n```\n\n## T\n\n```python\nprint(x)\n```\n\n"
          "```pycon\n>>> 1 + 1\n3\n```\n\n"
          "```console\n$ sh -c 'echo one; exit 3'\none\n$ echo $?\n3\n$ echo two\ntwo\n```\n\n"
          "```console\n$ echo three\nfour\n```\n\n```sh\nfalse\n```\n")
    blocks = parse_blocks(md)
    groups: dict[int, list[Block]] = {}
    for b in blocks:
        if b.lang in PYTHON_LANGS:
            groups.setdefault(b.section_line, []).append(b)
    s, t = groups.values()
    assert _python_failures(s, blocks, tmp_path, env) == []
    bad = _python_failures(t, blocks, tmp_path, env)
    assert len(bad) == 1 and "NameError" in bad[0]  # sections do not share state
    assert "Expected:\n    3\nGot:\n    2" in _python_failures(t[1:], blocks, tmp_path,
                                                              env)[0]
    shells = [b for b in blocks if b.lang in SESSION_LANGS | COMMAND_LANGS]
    assert [len(_command_failures(b, tmp_path, env)) for b in shells] == [0, 1, 1]


def test_every_block_has_a_known_tag() -> None:
    known = SESSION_LANGS | COMMAND_LANGS | PYTHON_LANGS | INERT_LANGS
    bad = [f"README.md:{b.line}: {b.lang or 'no tag'}" for b in BLOCKS if b.lang not in known]
    assert not bad, ("fenced blocks need one of the tags " + ", ".join(sorted(known))
                     + " (see this test's docstring):\n" + "\n".join(bad))


def test_no_indented_code_blocks() -> None:
    lines = indented_code_lines(README.read_text())
    assert not lines, f"indented code blocks escape this test; fence them: lines {lines}"


def test_text_blocks_are_outputs_or_not_commands() -> None:
    """A ``text`` block is an output or a listing, never a command the test would miss."""
    for b in _blocks_of(INERT_LANGS):
        first = b.text.lstrip().split("\n", 1)[0]
        assert not first.startswith(("$ ", "iommulab ", "python3 ", ">>> ")), (
            f"README.md:{b.line}: a text block that looks like a command; tag it")


def test_skip_list_is_current() -> None:
    commands = {c for b in _blocks_of(SESSION_LANGS) for c, _ in session_commands(b.text)}
    commands |= {c for b in _blocks_of(COMMAND_LANGS) for c in script_commands(b.text)}
    stale = [c for c in SKIP if c not in commands]
    assert not stale, f"SKIP names commands the README no longer has: {stale}"


def _inline_spans(markdown: str) -> list[str]:
    """The inline code spans of the prose (outside fenced blocks), line breaks as spaces."""
    prose = re.sub(r"^(`{3,}|~{3,}).*?^\1\s*$", "", markdown, flags=re.S | re.M)
    return [" ".join(m.split()) for m in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def test_files_the_prose_names_exist() -> None:
    """A path of the checkout the README names (``tests/...``, ``benchmarks/...``) is there."""
    missing = []
    for span in _inline_spans(README.read_text()):
        for word in span.split():
            if (re.match(r"^(\.ci|src|tests|benchmarks|docs|scripts)/", word)
                    and not (ROOT / word.rstrip(".,;:)")).exists()):
                missing.append(word)
    assert not missing, f"the README names files the checkout lacks: {missing}"


def test_python_names_the_prose_gives_exist() -> None:
    """``iommulab.x.y`` in the prose imports (module, then attributes)."""
    import importlib
    bad = []
    for span in _inline_spans(README.read_text()):
        m = re.fullmatch(r"(iommulab(?:\.\w+)+)(?:\(.*\))?", span)
        if not m:
            continue
        parts = m.group(1).split(".")
        for k in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:k]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[k:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                bad.append(m.group(1))
            break
        else:
            bad.append(m.group(1))
    assert not bad, f"the README names what iommulab does not have: {bad}"


def test_commands_the_prose_gives_exist(env: dict[str, str]) -> None:
    """``iommulab SUB --opt`` in the prose: the subcommand and each option exist.

    A span is a mention, not a complete command (``iommulab exec``), so it is not run;
    its ``--help`` must list every option it uses. ``A|B`` alternatives count as A.
    """
    spans = sorted({s for s in _inline_spans(README.read_text()) if s.startswith("iommulab ")})
    assert spans
    probe = textwrap.dedent("""
        import contextlib, io, json, sys
        from iommulab.cli import main
        out = {}
        for argv in json.load(sys.stdin):
            buf = io.StringIO()
            code = None
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    code = main(argv + ["--help"])
                except SystemExit as e:
                    code = e.code
            out[" ".join(argv)] = [code, buf.getvalue()]
        sys.stdout.write(json.dumps(out))
    """)
    argvs = []
    for span in spans:
        words = [w.split("|")[0] for w in span.split()[1:]]
        argvs.append([w for w in words if w.startswith("-") or not re.search(r"[A-Z]", w)])
    proc = subprocess.run([sys.executable, "-c", probe], input=json.dumps(argvs), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    helps = json.loads(proc.stdout)
    for span, argv in zip(spans, argvs, strict=True):
        code, text = helps[" ".join(argv)]
        assert code == 0, f"README: `{span}`: {text}"
        for opt in (w.split("=")[0] for w in argv if w.startswith("--")):
            assert re.search(re.escape(opt) + r"(?![\w-])", text), (
                f"README: `{span}`: {opt} is not an option:\n{text}")


def test_parser_reads_what_it_should() -> None:
    """The parsing helpers on small inputs, so a README that parses to nothing cannot pass."""
    md = ("# A\n\n```console\n$ echo hi \\\n  there\nhi there\n$ echo $?\n0\n```\n\n"
          "## B\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n    indented\n\n"
          "- item\n\n  continued\n\n      code in an item\n")
    blocks = parse_blocks(md)
    assert [(b.line, b.lang, b.section) for b in blocks] == [
        (3, "console", "A"), (13, "python", "B"), (17, "text", "B")]
    assert blocks[2].follows is blocks[1] and blocks[1].follows is None
    assert session_commands(blocks[0].text) == [("echo hi \\\n  there", "hi there"),
                                                 ("echo $?", "0")]
    assert indented_code_lines(md) == [21, 27]
    assert output_matches("a\n...\nz 1.5 s", "a\nb\nc\nz 0.25 s  \n")
    assert not output_matches("a 1 K", "a 2 K")
    assert not output_matches("a\nz", "a\nb\nz")
    assert len(BLOCKS) > 10
