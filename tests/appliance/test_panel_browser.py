"""The operator panel in a real Chromium (Debian's, driven by Playwright; never
`playwright install`) against a real appliance on the simulated line: log in as
operator, see the live frame change and the counters rise, open a failure, confirm a
detection, draw a missed-defect box, acknowledge the alarm caused by stopping the camera;
threshold and rollback controls are absent for an operator and present for an engineer.

Screenshots go to each test's artefact directory and, when LINEGUARD_SCREENSHOTS names a
directory (`LINEGUARD_SCREENSHOTS=docs/img`), there too (the README's pictures).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.appliance.panel_rig import ENGINEER, OPERATOR, RunningApp

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin"),
]
playwright_api = pytest.importorskip("playwright.sync_api")
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    rig = RunningApp(tmp_path_factory.mktemp("browser-app"))
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("LINEGUARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name))


def login(browser: Any, running: RunningApp, who: tuple[str, str]) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(running.url + "/live")
    assert "/login" in page.url
    page.fill("input[name=username]", who[0])
    page.fill("input[name=password]", who[1])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/live$"))
    return page


def test_live_view_changes_and_counters_rise(browser: Any, running: RunningApp,
                                             tmp_path: Path) -> None:
    page = login(browser, running, OPERATOR)
    station = page.locator("section.station[data-station=cam]")
    station.wait_for()
    first = station.get_attribute("data-frame")
    page.wait_for_function(
        "f => document.querySelector('section.station').dataset.frame !== f", arg=first)
    verdict = station.locator(".verdict")
    assert re.fullmatch(r"(PASS|FAIL|UNINSPECTED.*)", verdict.inner_text())
    # a fail for the picture: boxes and the word FAIL
    page.wait_for_function(
        "() => document.querySelector('section.station.fail .overlay .box') !== null")
    shoot(page, tmp_path, "panel-live.png")

    page.goto(running.url + "/counters")
    parts = page.locator("#shift tr[data-key=Parts] td.num")
    parts.wait_for()
    before = int(parts.inner_text())
    page.wait_for_function(
        "n => Number(document.querySelector('#shift tr[data-key=Parts] td.num')"
        ".textContent) > n", arg=before)
    assert page.locator("#chart-latency svg path").count() >= 1
    page.context.close()


def test_open_a_failure_confirm_and_draw_a_missed_defect(browser: Any, running: RunningApp,
                                                         tmp_path: Path) -> None:
    page = login(browser, running, OPERATOR)
    page.goto(running.url + "/gallery")
    card = page.locator("#gallery a.card").first
    card.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                           ".some(i => i.complete && i.naturalWidth > 0)")
    shoot(page, tmp_path, "panel-gallery.png")
    frame_id = card.get_attribute("data-frame")
    card.click()
    page.wait_for_url(re.compile(r".*/frame/.*"))
    page.locator("#detections button.confirm").first.click()
    page.locator("#frame-msg", has_text="Saved: confirm").wait_for()
    # draw a missed defect: drag over the picture, pick a class, save
    svg = page.locator("#frame-view .overlay")
    svg.wait_for()
    box = svg.bounding_box()
    assert box is not None
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.6 * w, y + 0.6 * h)
    page.mouse.down()
    page.mouse.move(x + 0.8 * w, y + 0.8 * h, steps=5)
    page.mouse.up()
    page.locator("#missed").wait_for(state="visible")
    page.select_option("#missed-class", index=1)
    page.click("#missed-save")
    page.locator("#frame-msg", has_text="Saved: missed").wait_for()
    shoot(page, tmp_path, "panel-frame.png")
    labels = running.app.panel.context.labels.for_frame(frame_id)  # type: ignore[union-attr]
    kinds = sorted(label.kind for label in labels)
    assert kinds == ["confirm", "missed"]
    missed = next(label for label in labels if label.kind == "missed")
    assert missed.author == "olga" and missed.box_xyxy is not None
    x1, y1, x2, y2 = missed.box_xyxy
    assert 0 <= x1 < x2 and 0 <= y1 < y2
    page.context.close()


def test_acknowledge_the_alarm_of_a_stopped_camera(browser: Any, running: RunningApp,
                                                   tmp_path: Path) -> None:
    page = login(browser, running, OPERATOR)
    page.goto(running.url + "/alarms")
    running.camera.off()
    try:
        alarm = page.locator("#alarms-current .alarm[data-code=camera_lost]")
        alarm.wait_for()
        page.locator("#alarm-badge").wait_for(state="visible")
        shoot(page, tmp_path, "panel-alarm.png")
    finally:
        running.camera.on()
    alarm.locator("button.ack").click()
    page.locator("#alarms-current .alarm[data-code=camera_lost]",
                 has_text="acknowledged by olga").wait_for()
    page.context.close()


def test_engineer_controls_are_for_engineers_only(browser: Any, running: RunningApp,
                                                  tmp_path: Path) -> None:
    operator = login(browser, running, OPERATOR)
    operator.goto(running.url + "/model")
    operator.locator("#model table").wait_for()
    assert operator.locator("#thresholds-form").count() == 0
    assert operator.locator("#rollback").count() == 0
    operator.context.close()
    engineer = login(browser, running, ENGINEER)
    engineer.goto(running.url + "/model")
    engineer.locator("#thresholds input").first.wait_for()
    assert engineer.locator("#rollback").count() == 1
    assert "No previous bundle" in engineer.locator("#rollback-to").inner_text()
    shoot(engineer, tmp_path, "panel-model.png")
    engineer.context.close()
