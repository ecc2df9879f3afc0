"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated JSON
on its file descriptors 3 (in) and 4 (out), so no websocket library is needed. The test loads
the report from a file, waits for the load event, collects every console message, exception
and log entry, checks that each image decoded, reads the rendered summary table, sorts a table
by clicking its header, and saves a full-page screenshot (``report.png`` in the test's tmp
folder). If Chromium is missing, the module installs the Debian package ``chromium`` with
apt-get; it skips only when apt-get is unavailable or the install fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synthetic_runs import make_scores, perturbed

from llmcal.calibrate import TemperatureScaling
from llmcal.cli import main
from llmcal.report.tables import SUMMARY_ROWS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--hide-scrollbars",
    "--mute-audio",
)
STEP_TIMEOUT = 30.0  # seconds for any one DevTools answer or event
WIDTH = 1280


def _find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def browser() -> str:
    """Path of a Chromium binary, installed with apt-get when missing."""
    found = _find_browser()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and apt-get is unavailable to install it")
    try:
        result = _apt("install", "-y", "chromium", timeout=900)
        if result.returncode != 0:  # the package lists may be missing or stale
            _apt("update", timeout=600)
            result = _apt("install", "-y", "chromium", timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"installing Chromium with apt-get failed: {exc}")
    found = _find_browser()
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        pytest.skip(f"installing Chromium with apt-get failed: {' / '.join(tail)}")
    return found


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self.log = log.open("wb")
        # fd 3 / fd 4 of the browser are this side's stdin / stdout pipes
        self.proc = subprocess.Popen(
            ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2', binary,
             *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.write, self.read = self.proc.stdin, self.proc.stdout.fileno()
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium within the time limit")
            chunk = os.read(self.read, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe; see {self.log.name}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return dict(json.loads(raw))

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session and self.session:
            msg["sessionId"] = self.session
        self.write.write(json.dumps(msg).encode() + b"\0")
        self.write.flush()
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return dict(reply.get("result", {}))
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event named ``method`` (already received or still to come)."""
        for e in self.events:
            if e["method"] == method:
                return e
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            msg = self._message(deadline)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        """Close the browser; kill it if it does not exit promptly."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", session=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def devtools(browser: str, tmp_path: Path) -> Iterator[DevTools]:
    """A fresh headless Chromium (own profile), attached to one page."""
    dt = DevTools(browser, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = dt.send("Target.createTarget", url="about:blank")["targetId"]
        dt.session = dt.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            dt.send(f"{domain}.enable")
        dt.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield dt
    finally:
        dt.close()


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors and warnings, uncaught exceptions, and error log entries."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in (
            "error",
            "warning",
            "assert",
        ):
            out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif e["method"] == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") in (
            "error",
            "warning",
        ):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
    return out


def _eval_table(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, str]:
    """What ``llmcal eval`` prints for a file, as {evaluate key: text}."""
    assert main(["eval", str(path)]) == 0
    out = capsys.readouterr().out
    by_label = {label: key for key, label, _ in SUMMARY_ROWS}
    numbers = {}
    for line in out.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) == 2:
            key = "ece" if parts[0].startswith("ECE (") else by_label.get(parts[0])
            if key:
                numbers[key] = parts[1]
    assert len(numbers) == len(SUMMARY_ROWS), out
    return numbers


_SUMMARY_JS = """
Array.from(document.querySelectorAll('#summary-table tbody tr')).map(tr => {
  const row = {run: tr.cells[0].textContent.trim()};
  tr.querySelectorAll('td[data-key]').forEach(td => { row[td.dataset.key] = td.textContent; });
  return row;
})
"""

_IMAGES_JS = """
Promise.all(Array.from(document.images).map(img => img.decode().then(
  () => ({alt: img.alt, w: img.naturalWidth, h: img.naturalHeight, shown: img.clientWidth}),
  err => ({alt: img.alt, w: 0, h: 0, error: String(err)}))))
"""


def test_report_renders_in_chromium(
    devtools: DevTools, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_scores(0, n=300)
    aligned = perturbed(base, seed=1, scale=1.3).replace(meta={"model": "aligned-model"})
    paths = {name: tmp_path / f"{name}.parquet" for name in ("base", "aligned")}
    base.save(paths["base"])
    aligned.save(paths["aligned"])
    TemperatureScaling().fit(aligned).save(tmp_path / "ts.json")
    page = tmp_path / "report.html"
    code = main(
        ["report", str(paths["base"]), str(paths["aligned"]), "--calibrator",
         str(tmp_path / "ts.json"), "--out", str(page)]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()

    devtools.send("Page.navigate", url=page.as_uri())
    devtools.wait_for("Page.loadEventFired")

    images = devtools.evaluate(_IMAGES_JS)
    assert len(images) == 5, images  # overlay, panels, selective accuracy, 2 drift plots
    for img in images:
        assert img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img

    rows = {r["run"]: r for r in devtools.evaluate(_SUMMARY_JS)}
    assert list(rows) == ["base", "aligned", "aligned + ts"]
    for name in ("base", "aligned"):
        printed = _eval_table(capsys, paths[name])
        for key, text in printed.items():
            assert rows[name][key] == text, (name, key)

    # the inline script runs: clicking a header (of the last header row) sorts the subject table
    order = devtools.evaluate("""
      (() => {
        const table = document.getElementById('subject-table');
        const head = table.tHead.rows[table.tHead.rows.length - 1];
        const col = Array.from(head.cells).findIndex(th => th.textContent === 'n');
        const ece = Array.from(head.cells).findIndex(th => th.textContent.startsWith('ECE'));
        const values = () => Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[ece].dataset.value));
        const before = values();
        head.cells[ece].click();
        const ascending = values();
        return {before, ascending, sort: head.cells[ece].getAttribute('aria-sort'), n: col};
      })()
    """)  # fmt: skip
    assert order["before"] == sorted(order["before"], reverse=True)
    assert order["ascending"] == sorted(order["before"]) and order["sort"] == "ascending"

    # every table fits the page without a horizontal scroll bar, and the wide figures span it
    fit = devtools.evaluate("""
      (() => {
        const main = document.querySelector('main');
        const inner = main.clientWidth - 56;  // its padding
        const tables = Array.from(document.querySelectorAll('div.scroll')).map(d => ({
          id: d.firstElementChild.id, over: d.scrollWidth - d.clientWidth}));
        const wide = Array.from(document.querySelectorAll('img.wide')).map(i => i.clientWidth);
        return {inner, tables, wide};
      })()
    """)  # fmt: skip
    assert all(t["over"] <= 0 for t in fit["tables"]), fit["tables"]
    assert len(fit["wide"]) == 3 and all(w >= fit["inner"] - 4 for w in fit["wide"]), fit

    metrics = devtools.send("Page.getLayoutMetrics")["cssContentSize"]
    height = int(metrics["height"])
    assert height > 2000  # every section rendered
    devtools.send(
        "Emulation.setDeviceMetricsOverride",
        width=WIDTH,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    shot = devtools.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000

    # anything the page logged while loading, scripting or rendering
    devtools.send("Runtime.evaluate", expression="1")
    assert _problems(devtools.events) == []

    # and the check can see problems: a console error, and a load the page's CSP refuses
    devtools.evaluate("console.error('probe'); document.body.appendChild(new Image()).src = "
                      "'http' + '://example.invalid/x.png'; 1")  # fmt: skip
    devtools.evaluate("new Promise(r => setTimeout(r, 200))")
    found = _problems(devtools.events)
    assert any("probe" in p for p in found), found
    assert any("Content Security Policy" in p for p in found), found
