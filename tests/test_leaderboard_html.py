"""`rankify leaderboard --html`: the page a person opens, checked in a real browser (headless
Chromium from Debian with its chromedriver, given explicitly: nothing downloads a driver)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import rankify
from .test_registry_and_plugins import _install_plugin

LONG = "a-deliberately-long-pipeline-label-so-a-cut-or-overlap-would-show"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    env = _install_plugin(tmp)
    out = tmp / "res"
    for ds in ("dl19", "dl20"):
        for extra in ([], ["--reranker", "reverse"], ["--reranker", f"reverse?name={LONG}", "-k", "5"],
                      ["--reranker", "reverse", "reverse?strength=2"]):
            r = rankify("run", "-d", ds, "-r", "run:bm25", *extra, "-o", str(out), "-q", env=env)
            assert r.code == 0, r
    page = tmp / "board.html"
    r = rankify("leaderboard", "-o", str(out), "--html", str(page), "--baseline", "run:bm25")
    assert r.code == 0, r
    return page


def test_page_is_self_contained_with_marks(board):
    html = board.read_text(encoding="utf-8")
    for needle in ("http://", "https://", "<link", "src="):
        assert needle not in html.replace('xmlns="http://www.w3.org/2000/svg"', ""), needle
    assert "<svg" in html and 'id="pivot"' in html


def test_unknown_baseline_is_one_line(tmp_path, board):
    out = board.parent / "res"
    r = rankify("leaderboard", "-o", str(out), "--html", str(tmp_path / "x.html"), "--baseline", "run:bm26")
    assert r.code == 2 and "did you mean 'run:bm25'" in r.err and not (tmp_path / "x.html").exists(), r


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_page_in_a_real_browser(board, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.get(board.as_uri())
        heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#pivot thead th")]
        assert heads[:4] == ["pipeline", "dl19", "dl20", "mean"] and "s/query" in heads and "cache hits" in heads

        def names():
            return [tr.find_element(By.CSS_SELECTOR, "td").text
                    for tr in driver.find_elements(By.CSS_SELECTOR, "#pivot tbody tr")]

        assert sorted(names()) == names() and len(names()) == 4
        assert LONG + "@5" in " ".join(names())
        # the reversed top-100 is significantly worse than BM25 on both datasets; reversing twice is BM25
        row = {n: tr for n, tr in zip(names(), driver.find_elements(By.CSS_SELECTOR, "#pivot tbody tr"))}
        worse = row["run:bm25 >> reverse@100"].find_elements(By.CSS_SELECTOR, "td[data-mark='-']")
        assert len(worse) == 2
        assert not row["run:bm25 >> reverse@100 >> reverse?strength=2@100"].find_elements(
            By.CSS_SELECTOR, "td[data-mark='+'], td[data-mark='-']")
        # sort by the mean, descending on the second click
        mean = driver.find_elements(By.CSS_SELECTOR, "#pivot thead th")[3]
        mean.click()
        mean.click()
        means = [float(tr.find_elements(By.CSS_SELECTOR, "td")[3].text)
                 for tr in driver.find_elements(By.CSS_SELECTOR, "#pivot tbody tr")]
        assert means == sorted(means, reverse=True) and means[0] == pytest.approx(0.4927, abs=1e-4)
        # plot labels: inside the SVG and pairwise apart
        boxes = driver.execute_script("""
            const svg = document.getElementById('plot'), w = svg.width.baseVal.value, h = svg.height.baseVal.value;
            return Array.from(svg.querySelectorAll('text.label')).map(t => {
              const b = t.getBBox(); return [b.x, b.y, b.width, b.height, w, h, t.textContent]; });""")
        assert len(boxes) == 4
        for x, y, w, h, sw, sh, text in boxes:
            assert x >= 0 and y >= 0 and x + w <= sw and y + h <= sh, (text, x, w, sw)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                apart = a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
                assert apart, (a[6], b[6])
        shot = tmp_path / "leaderboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        keep = os.environ.get("RANKIFY_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
    finally:
        driver.quit()
