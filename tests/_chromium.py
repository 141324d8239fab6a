"""Run headless Chromium on a local HTML file: the DOM after scripts ran, console messages, a
screenshot. Used by the report's browser test."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["find_chromium", "chromium_problem", "render", "Rendered"]

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
)
_CONSOLE = re.compile(r":CONSOLE(?::|\()\d*\)?\]? (.*)$")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: tuple[str, ...]
    stderr: str


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sharedft-chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


def chromium_problem(binary: str | None, timeout: float = 60) -> str | None:
    """Why Chromium cannot run here (None when it renders a trivial page)."""
    if binary is None:
        return "Chromium is not installed (Debian: apt-get install -y chromium)"
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.html"
        probe.write_text("<!DOCTYPE html><p id=probe>ok</p>", encoding="utf-8")
        try:
            proc = _run(binary, ["--dump-dom", probe.as_uri()], timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"Chromium ({binary}) cannot start: {type(exc).__name__}: {exc}"
    if proc.returncode != 0 or 'id="probe"' not in proc.stdout:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return f"Chromium ({binary}) cannot render a page (exit {proc.returncode}): {tail}"
    return None


def render(binary: str, page: Path, screenshot: Path | None = None, timeout: float = 120,
           size: str = "1280,2000") -> Rendered:
    """The page's DOM after its scripts ran and every console message it logged."""
    proc = _run(binary, ["--dump-dom", page.resolve().as_uri()], timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    console = tuple(m.group(1) for line in proc.stderr.splitlines()
                    if (m := _CONSOLE.search(line)))
    if screenshot is not None:
        shot = _run(binary, [f"--window-size={size}", "--hide-scrollbars",
                             f"--screenshot={screenshot.resolve()}", page.resolve().as_uri()],
                    timeout)
        if shot.returncode != 0:
            raise RuntimeError(f"chromium --screenshot failed: {shot.stderr[-2000:]}")
    return Rendered(proc.stdout, console, proc.stderr)
