"""README snippets and every sample type-check under `mypy --strict`, as a user's code.

What is checked, in one mypy run over a temporary directory (so it stays quick):

- every fenced ```python block of README.md and of docs/*.md (when that folder exists);
  a block whose first line names a file (``# app.py``) becomes that file, so the
  README's files can import each other as they do for a user; the other blocks of a
  document are its running example (``client`` made in one block is used in the next)
  and are checked together, in order, as one script;
- every sample: samples/*.py, the Flask sample and the Django sample project.

A block that is deliberately partial is skipped by putting the marker
``<!-- typecheck: skip (the reason) -->`` on the line just before its opening fence
(an HTML comment: invisible in the rendered document). The reason is required.

The user's view of nolag is its typed public API: nolag's own modules are found where
they are imported from and followed silently (their errors are not the user's, and
``mypy --strict nolag`` checks them elsewhere). Django ships no type information, so,
as a user without django-stubs would, the check ignores its missing types.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import nolag

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*typecheck:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FILE_NAME = re.compile(r"# (\w+\.py)")


def rel(path: Path) -> str:
    """A repository path as the report shows it."""
    return path.relative_to(ROOT).as_posix()


def documents() -> list[Path]:
    """README.md and docs/*.md, the documents whose snippets are checked."""
    docs = ROOT / "docs"
    return [ROOT / "README.md", *(sorted(docs.glob("*.md")) if docs.is_dir() else [])]


class Layout:
    """The files to check in the temporary directory, and where their lines came from."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.files: list[Path] = []
        self.origins: dict[str, list[tuple[int, str]]] = {}  # file -> [(first line, origin)]
        self.skipped: list[str] = []

    def add(self, name: str, text: str, origins: list[tuple[int, str]]) -> None:
        path = self.top / name
        assert not path.exists(), f"two snippets or samples would both be {name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files.append(path)
        self.origins[str(path.relative_to(self.top))] = origins

    def where(self, file: str, line: int) -> str:
        """The document line or sample a checked file's line came from."""
        spans = [s for s in self.origins.get(file, []) if s[0] <= line]
        if not spans:
            return f"{file}:{line}"
        first, origin = spans[-1]
        doc, _, start = origin.rpartition(":")
        if start.isdigit():
            return f"{doc}:{int(start) + line - first}"
        return f"{origin}, line {line - first + 1}"

    def add_snippets(self, doc: Path, label: str) -> None:
        """A document's python blocks: named ones as their files, the others as one script."""
        text = doc.read_text(encoding="utf-8")
        script: list[str] = []
        origins: list[tuple[int, str]] = []
        for match in FENCE.finditer(text):
            fence_line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            if skip:
                self.skipped.append(f"{label}:{fence_line} ({skip.group('reason')})")
                continue
            if "typecheck" in before:
                pytest.fail(f"{label}:{fence_line - 1}: write '<!-- typecheck: skip (reason) -->'")
            block = match.group(1)
            named = FILE_NAME.fullmatch(block.split("\n", 1)[0])
            if named:
                self.add(named.group(1), block, [(1, f"{label}:{fence_line + 1}")])
            else:
                script.append(f"# {label} line {fence_line + 1}\n")
                origins.append(
                    (sum(s.count("\n") for s in script) + 1, f"{label}:{fence_line + 1}")
                )
                script.append(block + "\n")
        if script:
            stem = re.sub(r"\W", "_", doc.stem.lower())
            self.add(f"{stem}_examples.py", "".join(script), origins)

    def add_samples(self) -> None:
        """samples/*.py and the sample apps, copied under names that cannot collide."""
        samples = ROOT / "samples"
        for path in sorted(samples.glob("*.py")):
            self.add(f"sample_{path.stem}.py", path.read_text(encoding="utf-8"), [(1, rel(path))])
        flask_app = samples / "flask_app" / "app.py"
        self.add(
            "sample_flask_app.py", flask_app.read_text(encoding="utf-8"), [(1, rel(flask_app))]
        )
        django = samples / "django_app"
        manage = django / "manage.py"
        self.add("sample_django_manage.py", manage.read_text(encoding="utf-8"), [(1, rel(manage))])
        for path in sorted((django / "presence_site").glob("*.py")):  # a package: keep its name
            name = f"presence_site/{path.name}"
            self.add(name, path.read_text(encoding="utf-8"), [(1, rel(path))])


def mypy_config(top: Path) -> Path:
    """A strict configuration as a user of the installed, typed nolag would have."""
    source = Path(nolag.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in sysconfig.get_paths().values()}
    lines = [
        "[mypy]",
        "strict = True",
        "warn_unreachable = True",
        # an editable install hides nolag from mypy behind an import hook: point at it
        *([f"mypy_path = {source}"] if source not in installed else []),
        "[mypy-nolag.*]",
        "follow_imports = silent",
        "[mypy-websocket.*,msgpack.*]",  # nolag's untyped dependencies: not the user's
        "ignore_missing_imports = True",
        "[mypy-django.*]",
        "ignore_missing_imports = True",
    ]
    path = top / "mypy.ini"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _version(dist: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", importlib.metadata.version(dist))[:2]
    return tuple(int(n) for n in numbers)


@pytest.mark.timeout(300)
def test_readme_snippets_and_samples_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    if _version("flask") < (2, 2):
        # the oldest supported Flask (tox mindeps) declares none of its exports, so a
        # strict checker refuses `from flask import Flask`: the snippets are checked
        # against the Flask a user installs today, in every other environment
        pytest.skip(f"Flask {importlib.metadata.version('flask')} is not typed for mypy --strict")
    top = tmp_path / "user"
    top.mkdir()
    layout = Layout(top)
    for doc in documents():
        layout.add_snippets(doc, doc.relative_to(ROOT).as_posix())
    layout.add_samples()
    assert any(f.name == "readme_examples.py" for f in layout.files)
    # the public names themselves: each is a real type for mypy, and no module __getattr__
    # answers for a misspelt one (the unused-ignore check would flag the last line)
    uses = [
        f"def use_{n}(value: nolag.{n}) -> nolag.{n}:\n    return value\n\n"
        for n in nolag.__all__
        if n[0].isupper()
    ]
    layout.add(
        "public_names.py",
        "import nolag\nfrom nolag import *  # noqa: F403\n\n"
        + "".join(uses)
        + "version: str = nolag.__version__\n"
        + "missing = nolag.NoSuchName  # type: ignore[attr-defined]\n",
        [(1, "public_names.py (generated from nolag.__all__)")],
    )
    layout.add("handlers.py", HANDLERS, [(1, "handlers.py (the typed handlers probe)")])
    layout.add("shapes.py", SHAPES, [(1, "shapes.py (the presence collections probe)")])
    config = mypy_config(top)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            "--show-error-codes",
            *(str(f.relative_to(top)) for f in layout.files),
        ],
        cwd=top,
        capture_output=True,
        text=True,
        timeout=280,
    )
    errors = []
    for line in result.stdout.splitlines():
        located = re.match(r"([^:]+):(\d+): (.*)", line)
        errors.append(
            f"{layout.where(located.group(1), int(located.group(2)))}: {located.group(3)}"
            if located
            else line
        )
    assert result.returncode == 0, "\n".join(errors) + result.stderr
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


#: each event's handler is typed: the right shapes pass, and each wrong one must be an
#: error (strict mode's unused-ignore check fails the run if an ignore is not needed)
HANDLERS = """\
from collections.abc import Callable

from nolag import ActorPresence, NoLag


def joined(actor: ActorPresence) -> None: ...
def lost(reason: str) -> None: ...
def retrying(attempt: int, delay: float) -> None: ...
def failed(error: Exception) -> None: ...
def connected() -> None: ...


client = NoLag("token")
room = client.set_room("general")
same: Callable[[ActorPresence], None] = client.on("presence:join", joined)  # as it came
client.on("presence:leave", lambda actor: print(actor.actor_token_id))
client.on("disconnect", lost)
client.on("reconnecting", retrying)
client.once("error", failed)
client.on("connect", connected)
room.on("presence:update", joined)


@client.on("presence:update")
def updated(actor: ActorPresence) -> None: ...


@room.once("presence:leave")
def left(actor: ActorPresence) -> None: ...


client.on("presence:join", lost)  # type: ignore[call-overload]
client.on("disconnect", retrying)  # type: ignore[call-overload]
client.on("connect", joined)  # type: ignore[call-overload]
client.once("error", connected)  # type: ignore[call-overload]
room.on("connect", connected)  # type: ignore[call-overload]
client.on("presence:joined", joined)  # type: ignore[call-overload]
"""


#: issue 15: every set of presences is typed as one immutable tuple of ActorPresence
#: (a Sequence or a list would not pass for it), and the lobby's grouped view is by_room()
SHAPES = """\
from collections.abc import Mapping

from nolag import ActorPresence, NoLag

Presences = tuple[ActorPresence, ...]

client = NoLag("token")
room = client.set_room("general")
lobby = client.set_lobby("main")
shapes: list[Presences] = [
    client.get_all_presence(),
    client.get_all_presence("general"),
    client.get_all_presence(room_id="general"),
    client.fetch_presence("general", timeout=1.0),
    room.get_all_presence(),
    room.fetch_presence(timeout=1.0),
    lobby.subscribe(timeout=1.0),
    lobby.get_all_presence(),
    lobby.get_all_presence("general"),
    lobby.get_all_presence(room_id="general"),
    lobby.fetch_presence(timeout=1.0),
]
grouped: Mapping[str, Mapping[str, ActorPresence]] = lobby.by_room()
lobby.get_all_presence().items()  # type: ignore[attr-defined]
"""


def test_the_skip_marker_is_recognised_and_needs_a_reason(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- typecheck: skip (a fragment of the block above) -->\n```python\nx.y()\n```\n"
        "```python\n# tool.py\nvalue: int = 1\n```\n```python\nz: str = 'a'\n```\n",
        encoding="utf-8",
    )
    layout = Layout(tmp_path / "out")
    layout.add_snippets(doc, "doc.md")
    assert layout.skipped == ["doc.md:2 (a fragment of the block above)"]
    assert sorted(p.name for p in layout.files) == ["doc_examples.py", "tool.py"]
    assert layout.where("doc_examples.py", 2) == "doc.md:10"
    doc.write_text("<!-- typecheck: skip -->\n```python\nx\n```\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="typecheck: skip \\(reason\\)"):
        Layout(tmp_path / "out2").add_snippets(doc, "doc.md")
