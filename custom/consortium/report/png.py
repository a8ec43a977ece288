"""Render a run's report.html to a PNG with headless Chromium: `python -m consortium.report.png RUN`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser")
INSTALL_HINT = "install it with `apt-get install chromium` (Debian/Ubuntu) and run again"


class RenderError(RuntimeError):
    """The page could not be rendered; the message says what to do."""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise RenderError(f"no headless browser found (looked for {' and '.join(BROWSERS)} on PATH); {INSTALL_HINT}")


def render_png(html: Path, png: Path, width: int = 1280, height: int = 1100, *, timeout: float = 60.0) -> Path:
    """Screenshot `html` at `width` x `height` CSS pixels into `png`; returns `png`."""
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise RenderError(f"{html} does not exist; write it first with `consortium report RUN`")
    if width < 1 or height < 1:
        raise RenderError(f"window size must be positive, got {width}x{height}")
    browser = find_browser()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="report-png-chromium-")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        html.as_uri(),
    ]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)  # Chromium forks renderer/GPU helpers into the same group
            proc.communicate()
            raise RenderError(f"{browser} did not finish within {timeout:.0f} s rendering {html}") from None
        finally:
            _kill_group(proc.pid)  # helpers left behind by the browser, if any
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0 or not png.is_file():
        tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-10:])
        raise RenderError(f"{browser} exited with {proc.returncode} and wrote no {png.name}:\n{tail}")
    return png


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consortium.report.png", description=__doc__)
    parser.add_argument("run", type=Path, help="a run folder with report/report.html (runs/fedavg)")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: RUN/report/report.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before the browser is killed")
    args = parser.parse_args(argv)
    html = args.run / "report" / "report.html"
    if not html.is_file():
        print(f"error: {html} does not exist; run `consortium report {args.run}` first", file=sys.stderr)
        return 2
    try:
        png = render_png(html, args.out or html.with_suffix(".png"), args.width, args.height, timeout=args.timeout)
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report screenshot: {png} ({args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
