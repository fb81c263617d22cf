"""The report in real headless Chromium, and the README's first command as a subprocess.

`keraslens demo` runs once per session from the installed console script; its report
is opened in Chromium (Debian's package, installed by scripts/test.sh) together with
a report whose names are markup.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_fixtures import (
    XSS,
    Broken,
    DeadUnits,
    HostileNames,
    install_plugins,
    tiny_data,
    tiny_model,
)

import keraslens

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1280,1000",
]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`keraslens demo` from the installed console script, as the README tells."""
    folder = tmp_path_factory.mktemp("demo")
    command = Path(sys.executable).with_name("keraslens")
    done = subprocess.run(
        [str(command), "demo", "-o", "demo-report.html", "--json", "demo.json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return folder, done


def open_in_chromium(page: Path, tmp: Path, *action: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    return subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--log-net-log={tmp / 'net.json'}",
            *action,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def page_requests(net_log: Path) -> set[str]:
    """Every URL the page asked for over the network, from Chromium's network log.

    A request made for a frame has that frame's origin as initiator (`null` for a local
    file); Chromium's own calls (clock, accounts, updates, ... made for about:blank too,
    whatever the flags) have "not an origin", and are not the page's doing.
    """
    log = json.loads(net_log.read_text(errors="replace"))
    started = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    params = [e.get("params", {}) for e in log["events"] if e["type"] == started]
    return {
        p["url"]
        for p in params
        if "url" in p
        and p.get("initiator") != "not an origin"
        and not p["url"].startswith(("file:", "data:"))
    }


@needs_chromium
def test_a_page_request_is_seen_and_the_browser_s_own_are_not(tmp_path):
    # The check above can fail: a page that loads an image and fetches from the network.
    page = tmp_path / "page.html"
    page.write_text(
        '<img src="https://example.com/x.png"><script>fetch("https://example.org/y")</script>'
    )
    open_in_chromium(page, tmp_path, "--dump-dom")
    assert page_requests(tmp_path / "net.json") == {
        "https://example.com/x.png",
        "https://example.org/y",
    }


@pytest.mark.slow
def test_demo_command_writes_report_and_json_twin(demo):
    folder, done = demo
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Wrote demo-report.html" in done.stdout
    twin = json.loads((folder / "demo.json").read_text())
    assert twin["meta"]["model"] == "digits_cnn" and twin["meta"]["samples"] == 360
    assert set(twin["plugins"]) == {info.name for info in keraslens.registry.available()}


@pytest.mark.slow
def test_demo_report_stays_under_5_mb(demo):
    folder, _ = demo
    assert (folder / "demo-report.html").stat().st_size < 5 * 2**20


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_demo_report_renders_offline_without_errors_or_requests(demo, tmp_path):
    folder, _ = demo
    page = folder / "demo-report.html"
    opened = open_in_chromium(page, tmp_path, "--dump-dom")
    assert "CONSOLE" not in opened.stderr, opened.stderr[-2000:]
    assert page_requests(tmp_path / "net.json") == set()
    dom = opened.stdout
    twin = json.loads((folder / "demo.json").read_text())
    for anchor in ("verdict", "plugins", "layers", *(f"plugin-{name}" for name in twin["plugins"])):
        assert f'id="{anchor}"' in dom
    shot = open_in_chromium(page, tmp_path, f"--screenshot={tmp_path / 'report.png'}")
    assert shot.returncode == 0 and (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.browser
@needs_chromium
def test_markup_in_names_shows_as_text_in_the_browser(monkeypatch, tmp_path):
    install_plugins(monkeypatch, DeadUnits, Broken, HostileNames)
    page = keraslens.analyze(tiny_model(), tiny_data()).to_html(tmp_path / "xss.html")
    opened = open_in_chromium(page, tmp_path, "--dump-dom")
    assert "CONSOLE" not in opened.stderr
    assert page_requests(tmp_path / "net.json") == set()
    assert "<script" not in opened.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in opened.stdout and XSS not in opened.stdout
    assert 'id="plugin-fake-broken"' in opened.stdout
