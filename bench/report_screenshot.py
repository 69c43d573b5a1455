"""Render a run's report.html in headless Chromium: a full-page screenshot, the section headings of
the rendered DOM, and whether every embedded image decoded (naturalWidth > 0).

    apt-get install -y chromium
    python bench/report_screenshot.py runs/<id>/report.html [--out report.png]

Not a benchmark: a check of the report in a real browser, also used by tests/test_evaluate_report.py
(skipped where no chromium binary is found).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Added to a temporary copy of the page only: after load, record each image's decoded width in the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent)}));
});
</script>"""


def _chromium(chromium: str, profile: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-component-update",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(html_path: Path, png_path: Path, chromium: str | None = None, width: int = 1200, height: int = 3000) -> dict:
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise FileNotFoundError("no chromium binary on PATH (apt-get install chromium)")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as tmp:
        shot = _chromium(chromium, f"{tmp}/profile", f"--screenshot={png_path}", f"--window-size={width},{height}",
                         html_path.as_uri())
        if not png_path.exists():
            raise RuntimeError(f"chromium wrote no screenshot of {html_path}: {shot.stderr[-2000:]}")
        # The page's Content-Security-Policy forbids scripts; the probe runs in a copy without it.
        page = html_path.read_text(encoding="utf-8")
        probe_page = Path(tmp, "probe.html")
        probe_page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page).replace("</body>", PROBE + "</body>"),
                              encoding="utf-8")
        dom = _chromium(chromium, f"{tmp}/profile", "--dump-dom", "--virtual-time-budget=5000", probe_page.as_uri()).stdout
    m = re.search(r"data-probe=\"([^\"]*)\"", dom)
    if not m:
        raise RuntimeError(f"the probe did not run in {html_path}'s copy; DOM starts {dom[:300]!r}")
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return {"png": str(png_path), "png_bytes": png_path.stat().st_size, "images": probe["images"],
            "images_decoded": probe["decoded"], "headings": probe["headings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: report.png beside the report)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    result = screenshot(args.report, args.out or args.report.with_name("report.png"), width=args.width, height=args.height)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
