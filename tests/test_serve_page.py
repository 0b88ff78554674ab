"""The try-it page at `/`, driven in headless Chromium (Selenium): pick an adapter, paste texts, read the bars.

Needs the `chromium` and `chromium-driver` Debian packages and `selenium` from PyPI; skipped without them. Set
PEFT_DECT_SCREENSHOT_DIR to also write the screenshot there (docs/ holds the one in the README).
"""

import os
import shutil

import pytest
from serve_util import LiveServer, base_model, fit_adapter

from peft_dect.serving import AdapterRegistry, ServeSettings, create_app


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
TEXTS = ["a gorgeous, moving film", "a dull, tedious film", "the plot was fine and the acting fun"]


def test_the_page_classifies_pasted_texts_with_probability_bars(tmp_path, bpe_tokenizer):
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no Chromium and chromedriver binaries (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select, WebDriverWait

    registry = AdapterRegistry(base_model(bpe_tokenizer), bpe_tokenizer)
    expected = {}
    for name, flip in (("sentiment-flipped", True), ("sentiment", False)):
        model = fit_adapter(bpe_tokenizer, tmp_path / name, flip=flip)
        expected[name] = model.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
        registry.add(str(tmp_path / name))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=900,1100",
    ):
        options.add_argument(flag)
    with LiveServer(create_app(registry, ServeSettings())) as server:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
        try:
            driver.set_page_load_timeout(30)
            driver.get(f"http://127.0.0.1:{server.port}/")
            wait = WebDriverWait(driver, 20)
            wait.until(lambda d: len(d.find_elements("css selector", "#adapter option")) == 2)
            Select(driver.find_element("id", "adapter")).select_by_value("sentiment")
            assert "negative, positive" in driver.find_element("id", "about").text
            driver.find_element("id", "texts").send_keys("\n".join(TEXTS))
            driver.find_element("id", "classify").click()
            wait.until(lambda d: len(d.find_elements("css selector", "#results .result")) == len(TEXTS))
            shown = [
                {
                    row.find_element("css selector", ".name").text: float(
                        row.find_element("css selector", ".pct").text.rstrip("%")
                    )
                    for row in result.find_elements("css selector", ".row")
                }
                for result in driver.find_elements("css selector", "#results .result")
            ]
            assert driver.find_element("id", "error").text == ""
            path = tmp_path / "serve_page.png"
            driver.save_screenshot(str(path))
        finally:
            driver.quit()
    for row, probs in zip(shown, expected["sentiment"]):
        assert row == {
            "negative": pytest.approx(100 * probs[0], abs=0.051),
            "positive": pytest.approx(100 * probs[1], abs=0.051),
        }
    assert path.stat().st_size > 5_000
    target = os.environ.get("PEFT_DECT_SCREENSHOT_DIR")
    if target:
        shutil.copy(path, os.path.join(target, "serve_page.png"))
