"""The README and the docs/ pages: their code runs for real, their links lead somewhere.

The README's example and every code snippet of the Scripts, Flask, Django and Testing
sections (docs/integrations.md, docs/testing.md) run. Each ```python block there starts
with a comment naming its file (``# app.py``). The scripts run as processes against a
local broker; the Flask app and the test modules run together as a user's pytest suite
(through the nolag pytest plugin); the Django settings, view and template run in a small
Django project in another process, so that Django is configured nowhere in this one.
Every other ```python block of the README and of docs/*.md must at least compile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest
from helpers import TOKENS, connected, wait_until

from nolag.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SECTIONS = ("Scripts", "Flask", "Django", "The pytest plugin")
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("NOLAG_", "DJANGO_"))}


def section(title: str) -> str:
    """The text of the one '## title' section among the README and the docs pages."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found += re.findall(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert len(found) == 1, f"{len(found)} '## {title}' sections in README.md and docs/*.md"
    return str(found[0])


def blocks(title: str, lang: str) -> list[str]:
    """The fenced blocks of a language in one section, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", section(title), re.S | re.M)


def python_files(title: str) -> dict[str, str]:
    """The section's python blocks by the file name their first line gives."""
    files = {}
    for block in blocks(title, "python"):
        first = block.splitlines()[0]
        assert re.fullmatch(r"# \w+\.py", first), f"{title}: block must start '# name.py'"
        files[first[2:]] = block
    return files


def test_every_python_snippet_of_the_sections_names_its_file() -> None:
    names = {title: sorted(python_files(title)) for title in SECTIONS}
    assert names == {
        "Scripts": ["script.py"],
        "Flask": ["app.py"],
        "Django": ["settings.py", "views.py"],
        "The pytest plugin": ["conftest.py", "test_app.py", "test_presence.py"],
    }


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text) < 8000, "the README is for a newcomer's five minutes: move detail to docs/"
    bash = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert bash[0].strip().endswith("&& nolag demo") and "pip install -e" in bash[0]
    assert bash[1].strip().endswith("&& python -m pytest") and "pip install -e" in bash[1]
    assert text.index(bash[1]) < text.index("\n## ")  # both come before the first section


def test_every_python_block_of_the_readme_and_the_docs_compiles() -> None:
    count = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
            compile(block, f"{page.name}: {block.splitlines()[0]}", "exec")
            count += 1
    assert count >= 20, count  # the snippets were found


def test_every_relative_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if urllib.parse.urlparse(target).scheme:
                continue  # an absolute URL
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def anchors(page: Path) -> set[str]:
    """The anchors a Markdown renderer gives the page's headings (lower case, dashes)."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_readme_example_runs_against_a_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    [hello] = re.findall(r"^```python\n(# hello\.py\n.*?)^```", README.read_text(), re.S | re.M)
    script = tmp_path / "hello.py"
    script.write_text(hello.replace("ws://127.0.0.1:8080/ws", broker.url))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["alice online"]


def test_the_script_runs_against_a_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(python_files("Scripts")["script.py"])
    with connected(broker.url, TOKENS["bob"]) as bob:
        bob.set_presence({"username": "Bob", "status": "online"}, room="general")
        wait_until(lambda: bob.get_presence("bob", "general"))
        result = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**ENV, "NOLAG_URL": broker.url, "NOLAG_TOKEN": TOKENS["alice"]},
        )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["alice deploying", "bob online"]


def test_the_flask_app_and_the_testing_snippets_pass_as_a_user_suite(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    files = {**python_files("Flask"), **python_files("The pytest plugin")}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


DJANGO_DRIVER = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "readme_settings"
import django
django.setup()
from django.core.management import call_command
from django.template import engines
from django.test import Client, RequestFactory
call_command("check")
template = engines["django"].from_string(open("template.html").read())
print(json.dumps({
    "online": Client().get("/online").json(),
    "page": template.render({}, request=RequestFactory().get("/")),  # with context processors
}))
"""


def test_the_django_settings_without_nolag_token_fail_the_check_not_with_a_keyerror(
    tmp_path: Path,
) -> None:
    pytest.importorskip("django")
    settings = python_files("Django")["settings.py"] + 'SECRET_KEY = "readme"\nDATABASES = {}\n'
    (tmp_path / "readme_settings.py").write_text(settings)
    driver = (
        "import os, sys\nsys.path.insert(0, os.getcwd())\n"
        'os.environ["DJANGO_SETTINGS_MODULE"] = "readme_settings"\n'
        "import django\ndjango.setup()\n"
        "from django.core.management import call_command\ncall_command('check')\n"
    )
    (tmp_path / "driver.py").write_text(driver)
    result = subprocess.run(
        [sys.executable, "driver.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,  # no NOLAG_TOKEN
    )
    assert result.returncode != 0
    assert "KeyError" not in result.stderr
    assert "SystemCheckError" in result.stderr
    assert "(nolag.E001) settings.NOLAG: no TOKEN given and NOLAG_TOKEN is not set" in result.stderr


def test_the_django_settings_view_and_template_work(broker: EmbeddedBroker, tmp_path: Path) -> None:
    pytest.importorskip("django")
    files = python_files("Django")
    [template] = blocks("Django", "django")
    settings = files["settings.py"] + textwrap.dedent(
        """
        SECRET_KEY = "readme"
        ROOT_URLCONF = "readme_urls"
        ALLOWED_HOSTS = ["testserver"]
        DATABASES = {}
        """
    )
    (tmp_path / "readme_settings.py").write_text(settings)
    (tmp_path / "views.py").write_text(files["views.py"])
    (tmp_path / "readme_urls.py").write_text(
        "from django.urls import path\nimport views\nurlpatterns = [path('online', views.online)]\n"
    )
    (tmp_path / "template.html").write_text(template)
    (tmp_path / "driver.py").write_text(DJANGO_DRIVER)
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"username": "Alice"}, room="general")
        wait_until(lambda: alice.get_presence("alice", "general"))
        result = subprocess.run(
            [sys.executable, "driver.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**ENV, "NOLAG_URL": broker.url, "NOLAG_TOKEN": "dev-token-backend"},
        )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["online"]["roomId"] == "general" and out["online"]["count"] == 1
    assert [a["actorTokenId"] for a in out["online"]["actors"]] == ["alice"]
    page = " ".join(out["page"].split())
    assert "<p>1 online</p>" in page and "<li>Alice since " in page and "1 in general" in page
