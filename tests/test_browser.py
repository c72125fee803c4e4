"""The counter page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) against a demo branch process with the demo
data, logging in, finding a member and topping up 100.00 through the page.

The screenshot of the counter after the top-up is kept as a test artifact in
test-artifacts/ at the repository root (git-ignored)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from test_demo import processes_using

from crdtledger.ledger import Ledger
from reference_app.demo import Demo
from reference_app.demo_data import OWNER
from reference_app.i18n import money

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_S = 60  # a hang fails; a slow shared CI box does not
PHONE = "13812345678"  # 张伟, a member of SH01 in the demo data


@pytest.fixture
def branch(tmp_path: Path) -> Iterator[Demo]:
    """The demo's stores, with SH01 running as `python -m reference_app` (node + pages)."""
    yield from _sh01(tmp_path, printer=False)


def _sh01(tmp_path: Path, *, printer: bool) -> Iterator[Demo]:
    demo = Demo(tmp_path / "demo-data", free_port(10))  # the member pages: BASE+9
    demo.create()
    if printer:
        demo.start_printer()
    demo.launch("SH01")
    try:
        demo.wait(lambda: demo.up("SH01"), "SH01 to start")
        yield demo
    finally:
        demo.stop()
    assert processes_using(demo.root) == []


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: ./run setup installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--lang=zh-CN"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, find: Callable[[WebDriver], Any], what: str) -> Any:
    """What `find` returns once it is truthy. The page re-renders parts of itself (the
    member panel after a top-up), so an element can go stale between two looks; and a
    dialog's button is covered while the dialog still slides in (Quasar's transition),
    so a click can land on what is above it: both are tried again."""
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=[
        StaleElementReferenceException, ElementClickInterceptedException]) \
        .until(lambda d: find(d) or None, message=f"waiting for {what}")


def click(driver: WebDriver, path: str, what: str) -> None:
    def done(d: WebDriver) -> bool:
        el = xpath(d, path)
        if el is None:
            return False
        el.click()
        return True

    wait_for(driver, done, what)


def type_into(driver: WebDriver, path: str, *keys: str, what: str) -> None:
    def done(d: WebDriver) -> bool:
        el = xpath(d, path)
        if el is None:
            return False
        el.send_keys(*keys)
        return True

    wait_for(driver, done, what)


def xpath(driver: WebDriver, path: str) -> WebElement | None:
    """The first visible element at `path`, if any."""
    return next((e for e in driver.find_elements(By.XPATH, path) if e.is_displayed()), None)


def text_of_tile(driver: WebDriver, label: str) -> str:
    """The figure under a balance tile's label on the member panel."""
    el = xpath(driver, f"//div[normalize-space()='{label}']/following-sibling::div[1]")
    return el.text.strip() if el is not None else ""


def cash_of(data: Path, phone: str) -> int:
    with Ledger.open(data, lock=False) as ledger:  # a reader beside the running node
        member = ledger.find_members(phone)[0]["id"]
        return int(ledger.balance(member)["cash"])


def test_top_up_through_the_counter_page(branch: Demo, browser: WebDriver) -> None:
    before = cash_of(branch.data("SH01"), PHONE)
    d = browser
    d.get(branch.url("SH01"))  # no session yet: the login page

    type_into(d, "//input[@type='text' or not(@type)]", OWNER[0], what="the login page")
    type_into(d, "//input[@type='password']", OWNER[1], Keys.ENTER, what="the password")

    type_into(d, "//input[@placeholder='搜索会员']", PHONE, Keys.ENTER, what="the counter")
    wait_for(d, lambda d: xpath(d, "//div[normalize-space()='张伟']"), "the member panel")
    assert wait_for(d, lambda d: text_of_tile(d, "储值余额"), "the balance") == money(before)

    click(d, "//button[contains(., '充值') and not(contains(., '确认'))]", "the top-up button")
    type_into(d, "//div[contains(@class, 'q-dialog')]//input", "100.00", what="the dialog")
    wait_for(d, lambda d: xpath(d, "//*[contains(., '卡内增加 ¥100.00')]"), "the preview")
    click(d, "//button[contains(., '确认充值')]", "the confirm button")

    after = money(before + 10000)
    wait_for(d, lambda d: text_of_tile(d, "储值余额") == after, f"the balance to show {after}")
    assert cash_of(branch.data("SH01"), PHONE) == before + 10000  # the store agrees

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-counter-topup.png"
    assert d.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


@pytest.fixture
def branch_with_printer(tmp_path: Path) -> Iterator[Demo]:
    """As `branch`, with the demo's receipt printer (a TCP listener that decodes what
    it gets) set as SH01's printer before SH01 starts."""
    yield from _sh01(tmp_path, printer=True)


def test_sell_a_package_and_print_its_receipt(branch_with_printer: Demo,
                                              browser: WebDriver) -> None:
    demo = branch_with_printer
    assert demo.printer is not None
    d = browser
    d.get(demo.url("SH01"))
    type_into(d, "//input[@type='text' or not(@type)]", OWNER[0], what="the login page")
    type_into(d, "//input[@type='password']", OWNER[1], Keys.ENTER, what="the password")
    type_into(d, "//input[@placeholder='搜索会员']", PHONE, Keys.ENTER, what="the counter")
    wait_for(d, lambda d: xpath(d, "//div[normalize-space()='张伟']"), "the member panel")

    click(d, "//button[contains(., '售套餐')]", "the package button")
    type_into(d, "//div[contains(@class, 'q-dialog')]//label[contains(., '价格（元）')]//input",
              "880.00", what="the price")
    click(d, "//div[contains(@class, 'q-dialog')]//div[@role='radio'][contains(., '微信')]",
          "WeChat Pay")
    click(d, "//button[contains(., '确认售出')]", "the sell button")
    wait_for(d, lambda d: xpath(d, "//*[normalize-space()='小票已打印']"), "the receipt printed")
    # The receipt on the paper: the package, its price and how it was paid.
    printed = wait_for(d, lambda _d: demo.printer.received if demo.printer else None,
                       "the printer to receive the receipt")
    text = printed[-1].text
    assert "套餐" in text and "880.00" in text and "微信" in text, text
    wait_for(d, lambda d: xpath(d, "//*[contains(., '购买套餐') and contains(., '微信')]"),
             "the sale in the last visits")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-counter-package-receipt.png"
    assert d.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
