"""`pmkt report` on the e2e chain, rendered in headless Chromium: every plot is drawn."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.e2e


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: `make test` installs Debian's chromium package (as root)"
    return path


def test_every_plot_of_the_report_renders_in_headless_chromium(chain, tmp_path):
    from ray_apps.evaluation.report import PLOT_IDS, write_report

    path, sections = write_report(chain["settings"], tmp_path / "report.html")
    assert [s.title for s in sections if s.missing] == []
    text = path.read_text(encoding="utf-8")
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    rendered = dict(re.findall(r'data-plot="([^"]+)"[^>]*data-rendered="([^"]+)"', dom))
    assert set(rendered) == set(PLOT_IDS), f"plots rendered: {sorted(rendered)}"
    for plot_id, size in rendered.items():
        width, height, marks = map(int, re.match(r"(\d+)x(\d+):(\d+)", size).groups())
        assert width > 200 and height > 150 and marks > 10, (plot_id, size)
    assert f'data-plots-drawn="{len(PLOT_IDS)}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000
