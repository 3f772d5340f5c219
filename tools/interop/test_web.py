"""The web pages (docs/WEB.md) in real headless Chromium against a real `coffer serve` on loopback: sign in with a
bearer token, browse to a version and see its verified badge, tamper with a blob on disk and see the page say so, a
reader refused the admin-only audit page, a signed-out browser sent to sign in, a form posted without its CSRF token
refused, and the session cookie's flags as the browser holds them. The outside review's findings: a page on another
port of the same host (same-site to the browser, so `SameSite=Strict` cookies go with its posts, and cookies ignore
ports) cannot sign the browser in as the attacker; a refused form is a 303 to a page a reload does not post again; a
server behind `--tls-cert` takes posts from its https origin.

Every page the browser is shown is also fetched raw (with the browser's cookie) and parsed by html5lib's strict
parser, and checked for any bearer token and any session cookie's value; so are the pages that answer a post (a
refused sign-in, a change request, a 429). At a phone's width no page scrolls sideways and the SVG figures' labels
stay readable. Screenshots of the main pages go to $COFFER_WEB_ARTIFACTS (a temp dir if unset); docs/web holds three
of them, reduced to 64 colours."""
import hashlib
import http.server
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import html5lib
import pytest
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tools" / "lib"))
import cofferlib  # noqa: E402

ARTIFACTS = Path(os.environ.get("COFFER_WEB_ARTIFACTS") or Path(tempfile.gettempdir()) / "coffer-web-screenshots")
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
SESSION = cofferlib.WEB_SESSION_COOKIE
SIGNIN = cofferlib.WEB_SIGNIN_COOKIE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry owned by alice (admin) with bob (reader, inference), m/risk:1 pushed with alias prod and a hostile
    tag, m/census:1 and :2 charged to the budget of dataset census (:2 the child of :1, with a training configuration:
    a lineage graph of three columns), tokens for both, and `coffer serve` on a free loopback port."""
    work = tmp_path_factory.mktemp("web")
    coffer = cofferlib.coffer_binary()
    env = cofferlib.environment(work)
    for name in ("alice", "bob"):
        cofferlib.keygen(coffer, work / name, env)
    home = work / "home"
    cofferlib.check(coffer, "init", "--home", home, "--owner", work / "alice.pub", env=env)
    admin = ["--identity", work / "alice.key", "--home", home]
    cofferlib.check(coffer, "trust", "add", work / "alice.pub", *admin, env=env)
    cofferlib.check(coffer, "principal", "add", "bob", work / "bob.pub", "--role", "reader", "--role", "inference", *admin, env=env)
    cofferlib.check(coffer, "synth", "--rows", "300", "--features", "3", "--out", work / "data", env=env)
    cofferlib.check(coffer, "train", "--config", work / "data" / "recipe.json", "--out", work / "ckpt", env=env)
    cofferlib.check(coffer, "push", "m/risk", work / "ckpt", "--alias", "prod", *admin, env=env)
    cofferlib.check(coffer, "tag", "m/risk:1", f"note={HOSTILE}", "--home", home, env=env)
    # Two versions charged to a budget, for its plot.
    cofferlib.check(coffer, "budget", "set", "census", "--epsilon", "10", "--delta", "1e-5", *admin, env=env)
    configuration = hashlib.sha256((work / "data" / "recipe.json").read_bytes()).hexdigest()
    for lineage in ([], ["--parent", "m/census:1", "--training-config-digest", configuration]):
        cofferlib.check(coffer, "push", "m/census", work / "ckpt", "--dataset", "census", *lineage, *admin, env=env)
    tokens = {
        "alice": cofferlib.check(coffer, "token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin, env=env).strip(),
        "bob": cofferlib.check(coffer, "token", "create", "--principal", "bob", "--scope", "read", "--ttl", "1h", *admin, env=env).strip(),
        "bob-infer": cofferlib.check(coffer, "token", "create", "--principal", "bob", "--scope", "infer", "--ttl", "1h", *admin, env=env).strip(),
    }
    process, base, log = cofferlib.start_server(coffer, home, env, work / "serve.log")
    try:
        # "sessions": every session cookie value a test's browser held, none of which may appear in a page.
        yield {"base": base, "home": home, "tokens": tokens, "sessions": set(), "log": log, "coffer": coffer, "env": env, "admin": admin}
    finally:
        cofferlib.stop_server(process)
        log.seek(0)
        served = log.read().decode(errors="replace")
        assert not any(token in served for token in tokens.values()), "a token reached the server's log"


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = cofferlib.headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def driver(browser, world):
    browser.delete_all_cookies()
    return browser


def raw(url, cookies):
    """The page as the server sent it (status, body), fetched with the browser's cookies, redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    request = urllib.request.Request(url, headers={"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in cookies)})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def strict_html(html, where="the page"):
    try:
        html5lib.HTMLParser(strict=True).parse(html)
    except html5lib.html5parser.ParseError as error:
        pytest.fail(f"{where} is not valid HTML: {error}\n{html}")


def no_secret(world, cookies, where, *bodies):
    """No bearer token and no session cookie's value (the browser's now, or any a test's browser held before) in a
    page. The sign-in form's CSRF cookie is meant to be in its form (a double-submit token) and is not a secret."""
    world["sessions"].update(c["value"] for c in cookies if c["name"] == SESSION)
    for body in bodies:
        assert not any(token in body for token in world["tokens"].values()), f"a bearer token is on {where}"
        assert not any(value in body for value in world["sessions"]), f"a session cookie's value is on {where}"


def check_page(driver, world):
    """The page the browser shows, fetched raw: valid HTML5 (strict parser), no secret in it."""
    cookies = driver.get_cookies()
    status, html = raw(driver.current_url, cookies)
    strict_html(html, driver.current_url)
    no_secret(world, cookies, driver.current_url, html, driver.page_source)
    assert "<script" not in html
    return status, html


def click(driver, by, selector):
    """Clicks a link or button and waits for the next page to replace this one (a click returns before it loads)."""
    driver.execute_script("window.cofferOldPage = true")
    driver.find_element(by, selector).click()
    WebDriverWait(driver, 30, ignored_exceptions=[WebDriverException]).until(
        lambda d: d.execute_script("return window.cofferOldPage === undefined && document.readyState === 'complete'")
    )


def shot(driver, name):
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def sign_in(driver, world, who, next_path="/models"):
    driver.get(world["base"] + next_path)
    assert "/signin" in driver.current_url
    driver.find_element(By.ID, "token").send_keys(world["tokens"][who])
    click(driver, By.CSS_SELECTOR, "form.card button[type=submit]")
    assert driver.current_url == world["base"] + next_path, driver.page_source


def test_signed_out_is_sent_to_sign_in(driver, world):
    driver.get(world["base"] + "/version?ref=m/risk:1")
    assert driver.current_url.startswith(world["base"] + "/signin?next=")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Sign in"
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text == "API token"
    check_page(driver, world)
    shot(driver, "signin")
    # Straight to the page asked for once signed in.
    driver.find_element(By.ID, "token").send_keys(world["tokens"]["bob"])
    click(driver, By.CSS_SELECTOR, "form.card button[type=submit]")
    assert driver.current_url == world["base"] + "/version?ref=m/risk:1", driver.page_source


def test_an_unknown_version_is_a_404_page(driver, world):
    sign_in(driver, world, "bob", "/version?ref=m/risk:99")
    assert driver.find_element(By.TAG_NAME, "h1").text == "404 Not Found"
    status, _ = check_page(driver, world)
    assert status == 404


def test_a_wrong_token_is_refused(driver, world):
    driver.get(world["base"] + "/signin")
    driver.find_element(By.ID, "token").send_keys("cft_" + "0" * 64)
    click(driver, By.CSS_SELECTOR, "form.card button[type=submit]")
    assert "unknown bearer token" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert not [c for c in driver.get_cookies() if c["name"] == SESSION]
    # The refusal answers the post, which a GET cannot fetch again: the same posts without the browser give the pages
    # to the strict parser, the token typed in never filled back in. Refused for the token (401), then for coming from
    # another origin (403).
    wrong = "cft_" + "1" * 64
    own = {"Origin": world["base"], "Sec-Fetch-Site": "same-origin"}
    status, html, _ = cofferlib.web_sign_in(world["base"], wrong, headers=own)
    assert status == 401 and "unknown bearer token" in html and wrong not in html, html
    strict_html(html, "the sign-in page refusing a token")
    status, html, _ = cofferlib.web_sign_in(world["base"], wrong, headers={"Origin": "http://127.0.0.1:1"})
    assert status == 403 and f"not from this server ({world['base']})" in html and wrong not in html, html
    strict_html(html, "the sign-in page refusing a post from another origin")


def test_cookie_flags_as_the_browser_holds_them(driver, world):
    sign_in(driver, world, "bob")
    # Chromium takes `__Host-` cookies from http://127.0.0.1: loopback is a secure context.
    session = [c for c in driver.get_cookies() if c["name"] == SESSION]
    assert len(session) == 1, driver.get_cookies()
    cookie = session[0]
    assert cookie["httpOnly"] is True and cookie["secure"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["domain"] == "127.0.0.1", cookie  # a host-only cookie: no Domain attribute
    assert re.fullmatch(r"cfw_[0-9a-f]{64}", cookie["value"]), cookie
    # Short-lived: 30 minutes from now, give or take the test's own time.
    import time

    assert 1700 < cookie["expiry"] - time.time() <= 1800
    # The page cannot read it: HttpOnly, whatever a script would try.
    assert SESSION not in driver.execute_script("return document.cookie")
    # Nor does any page carry its value: every page checked from here on is searched for it (and for every earlier one).
    check_page(driver, world)
    assert cookie["value"] in world["sessions"]


def test_browse_to_a_version_and_see_it_verified(driver, world):
    sign_in(driver, world, "bob")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Models"
    check_page(driver, world)
    shot(driver, "models")
    click(driver, By.LINK_TEXT, "m/risk")
    assert driver.find_element(By.TAG_NAME, "h1").text == "m/risk"
    row = driver.find_element(By.CSS_SELECTOR, "tbody tr")
    assert "verified" in row.text and "prod" in row.text
    check_page(driver, world)
    shot(driver, "versions")
    click(driver, By.LINK_TEXT, "1")
    assert driver.find_element(By.ID, "status").text == "verified"
    assert "signed by alice" in driver.find_element(By.ID, "status").find_element(By.XPATH, "..").text
    card = driver.find_element(By.CSS_SELECTOR, "section[aria-labelledby=privacy]").text
    for label in ("Mechanism", "Accountant", "Noise multiplier", "Sampling rate", "Steps", "Clip norm", "Epsilon", "Delta", "Pruning ratio"):
        assert label in card
    epsilon = driver.find_element(By.XPATH, "//section[@aria-labelledby='privacy']//dt[text()='Epsilon']/following-sibling::dd[1]").text
    assert float(epsilon) > 0, card
    lineage = driver.find_element(By.CSS_SELECTOR, "svg.lineage")
    assert lineage.find_element(By.TAG_NAME, "title").get_attribute("textContent") == "Lineage, oldest first: m/risk:1"
    assert lineage.find_element(By.CSS_SELECTOR, "rect.current").is_displayed()
    # The hostile tag is shown as text, never run or parsed as markup.
    assert driver.find_element(By.CSS_SELECTOR, "dd.tag").text == HOSTILE
    assert not driver.find_elements(By.CSS_SELECTOR, "main img") and not driver.find_elements(By.TAG_NAME, "script")
    check_page(driver, world)
    shot(driver, "version")


def test_a_form_posted_without_its_csrf_token_is_refused(driver, world):
    sign_in(driver, world, "bob")
    # The sign-out form, with its token taken out of the page (WebDriver's script runs outside the page's CSP).
    driver.execute_script("document.querySelector('form.signout input[name=csrf]').remove()")
    click(driver, By.CSS_SELECTOR, "form.signout button")
    # The refusal is a page the post was redirected to: reloading it shows it again and posts nothing.
    assert driver.current_url == world["base"] + "/notice"
    assert driver.find_element(By.TAG_NAME, "h1").text == "403 Forbidden"
    assert "CSRF token is missing or wrong" in driver.page_source
    status, _ = check_page(driver, world)
    assert status == 403
    driver.refresh()
    assert driver.current_url == world["base"] + "/notice" and "CSRF token is missing or wrong" in driver.page_source
    # And with a wrong one.
    driver.get(world["base"] + "/models")
    driver.execute_script("document.querySelector('form.signout input[name=csrf]').value = '0'.repeat(64)")
    click(driver, By.CSS_SELECTOR, "form.signout button")
    assert driver.find_element(By.TAG_NAME, "h1").text == "403 Forbidden"
    # Still signed in; with the token the page gave, signing out works and the pages send the browser to sign in.
    driver.get(world["base"] + "/models")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Models"
    click(driver, By.CSS_SELECTOR, "form.signout button")
    assert driver.current_url == world["base"] + "/signin"
    driver.get(world["base"] + "/models")
    assert "/signin" in driver.current_url


def test_a_reader_gets_the_403_page_on_the_audit_log(driver, world):
    sign_in(driver, world, "bob")
    assert not driver.find_elements(By.LINK_TEXT, "Audit log")
    driver.get(world["base"] + "/audit")
    assert driver.find_element(By.TAG_NAME, "h1").text == "403 Forbidden"
    assert "does not allow the admin role" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    status, _ = check_page(driver, world)
    assert status == 403
    shot(driver, "forbidden")


def test_an_admin_sees_the_audit_log_and_its_chain(driver, world):
    sign_in(driver, world, "alice")
    click(driver, By.LINK_TEXT, "Audit log")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Audit log"
    assert driver.find_element(By.ID, "chain-status").text == "verified"
    driver.find_element(By.ID, "f-action").send_keys("push")
    click(driver, By.CSS_SELECTOR, "form.filters button")
    rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert rows and all(row.find_elements(By.TAG_NAME, "td")[3].text == "push" for row in rows)
    check_page(driver, world)
    driver.get(world["base"] + "/audit")
    shot(driver, "audit")


def test_a_tampered_blob_is_reported_on_the_version_page(driver, world):
    sign_in(driver, world, "bob", "/version?ref=m/risk:1")
    assert driver.find_element(By.ID, "status").text == "verified"
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=files] tbody tr") if "model.safetensors" in r.text)
    digest = row.find_elements(By.TAG_NAME, "td")[4].text
    blob = Path(world["home"]) / "blobs" / "sha256" / digest[:2] / digest
    original = blob.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 1
    blob.write_bytes(bytes(changed))
    try:
        # A view reads no blob: the page still shows the signature verified, until somebody checks the blobs now.
        driver.refresh()
        assert driver.find_element(By.ID, "status").text == "verified"
        assert driver.find_element(By.ID, "blob-status").text == "not checked since this server started"
        click(driver, By.XPATH, "//button[text()='Check the blobs now']")
        assert driver.current_url == world["base"] + "/version?ref=m%2Frisk%3A1"
        assert driver.find_element(By.ID, "status").text == "not verified"
        assert driver.find_element(By.ID, "failure").text == "integrity check failed: blob of model.safetensors does not match its signed SHA-256"
        assert driver.find_element(By.ID, "blob-status").text == "mismatch"
        check_page(driver, world)
        shot(driver, "version-tampered")
    finally:
        blob.write_bytes(original)
    click(driver, By.XPATH, "//button[text()='Check the blobs now']")
    assert driver.find_element(By.ID, "status").text == "verified"
    assert driver.find_element(By.ID, "blob-status").text == "matched"
    assert "by bob" in driver.find_element(By.ID, "blob-status").find_element(By.XPATH, "..").text


def test_checking_the_blobs_too_often_is_a_429_page(driver, world):
    """Each "check now" reads and hashes every blob: past 3 at once for one principal, a 429 page saying when."""
    sign_in(driver, world, "alice", "/version?ref=m/risk:1")
    csrf = page_csrf(driver, world, "/version?ref=m/risk:1")
    answers = [post_raw(driver, world, "/version/check", {"csrf": csrf, "ref": "m/risk:1"}) for _ in range(4)]
    assert [status for status, _ in answers] == [200, 200, 200, 429], answers[-1][1]
    html = answers[-1][1]
    assert "<h1>429 Too Many Requests</h1>" in html and "alice checked versions 3 times recently: check again in" in html, html
    strict_html(html, "the 429 page")


# The SVG figures of a page as it is laid out: the smallest label's rendered height (its box, and its font size times
# the scale the SVG is drawn at), the widths of the figure's scrolling box and of the SVG, and whether the "scroll
# sideways" line shows.
FIGURES = """
return [...document.querySelectorAll('figure.figure')].map(figure => {
    const svg = figure.querySelector('svg'), texts = [...svg.querySelectorAll('text')], box = figure.querySelector('.scroll');
    return {svg: svg.getAttribute('class'), labels: texts.length,
            textHeight: Math.min(...texts.map(t => t.getBoundingClientRect().height)),
            fontPx: Math.min(...texts.map(t => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a)),
            boxWidth: box.clientWidth, scrollWidth: box.scrollWidth, svgWidth: svg.getBoundingClientRect().width,
            hint: getComputedStyle(figure.querySelector('.swipe')).display !== 'none'};
});
"""


def test_the_pages_fit_a_phone(driver, world):
    """At a phone's width nothing makes the page scroll sideways: wide tables and the SVG figures scroll inside their
    own box. The figures are never shrunk to fit (a 640-unit plot drawn 309 px wide had 6 px labels): their labels
    render at least 10 px tall, a figure wider than the phone scrolls over all of it and a line under it says so, and a
    lineage graph of one column (no dataset or configuration stated) is narrow enough to fit."""
    status, opened, _ = cofferlib.http_json(world["base"], "POST", "/v1/sessions", token=world["tokens"]["bob-infer"],
                                            body={"ref": "m/risk@prod", "ttl_seconds": 600, "max_uses": 3})
    assert status == 201, opened  # a row on /sessions
    # Each page, and for each figure on it whether it is wider than a phone.
    pages = {"/models": [], "/model?name=m/risk": [], "/version?ref=m/risk:1": [False], "/version?ref=m/census:2": [True],
             "/budgets": [], "/budget?dataset=census": [True], "/sessions": [], "/tokens": [], "/principals": [], "/audit": []}
    driver.set_window_size(390, 844)
    try:
        sign_in(driver, world, "alice")
        for path, wide in pages.items():
            driver.get(world["base"] + path)
            assert driver.find_element(By.TAG_NAME, "h1").text not in ("403 Forbidden", "404 Not Found"), path
            width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{path} is {width[0]} px wide in a {width[1]} px window"
            drawn = driver.execute_script(FIGURES)
            assert len(drawn) == len(wide), (path, drawn)
            for figure, too_wide in zip(drawn, wide):
                assert figure["labels"] > 0, (path, figure)
                assert figure["textHeight"] >= 10 and figure["fontPx"] >= 10, f"{path}: {figure['svg']}'s labels are too small: {figure}"
                assert (figure["svgWidth"] > figure["boxWidth"]) == too_wide, (path, figure)
                assert figure["scrollWidth"] >= figure["svgWidth"] - 1 and figure["hint"] == too_wide, (path, figure)
                if too_wide:
                    driver.execute_script("document.querySelector('figure.figure').scrollIntoView()")
                    shot(driver, "figure-phone-" + figure["svg"])
        driver.get(world["base"] + "/version?ref=m/risk:1")
        shot(driver, "version-phone")
    finally:
        driver.set_window_size(1280, 900)
    # On a wide screen the figures fit: drawn at the same size, no scrolling and no line about it.
    for path in ("/version?ref=m/census:2", "/budget?dataset=census"):
        driver.get(world["base"] + path)
        (figure,) = driver.execute_script(FIGURES)
        assert figure["fontPx"] >= 11.5 and figure["scrollWidth"] <= figure["boxWidth"] and not figure["hint"], (path, figure)


def test_the_budget_plot_is_drawn_on_the_server(driver, world):
    sign_in(driver, world, "bob")
    click(driver, By.LINK_TEXT, "Budgets")
    check_page(driver, world)
    click(driver, By.LINK_TEXT, "census")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Budget of census"
    plot = driver.find_element(By.CSS_SELECTOR, "svg.plot")
    assert plot.get_attribute("role") == "img" and "Composed epsilon" in plot.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    points = [tuple(map(float, p.split(","))) for p in plot.find_element(By.TAG_NAME, "polyline").get_attribute("points").split()]
    assert len(points) == 3 and points[2][1] < points[1][1] < points[0][1], points  # two charges, each higher than the last
    rows = driver.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=charged] tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["m/census:1", "m/census:2"]
    spent = float(driver.find_element(By.ID, "spent").text)
    assert abs(float(rows[-1].find_elements(By.TAG_NAME, "td")[3].text) - spent) < 1e-3 * spent
    check_page(driver, world)
    shot(driver, "budget")


def test_a_session_is_revoked_from_the_page(driver, world):
    status, opened, _ = cofferlib.http_json(world["base"], "POST", "/v1/sessions", token=world["tokens"]["bob-infer"],
                                            body={"ref": "m/risk@prod", "ttl_seconds": 600, "max_uses": 3})
    assert status == 201, opened
    sign_in(driver, world, "bob-infer")
    click(driver, By.LINK_TEXT, "Sessions")
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr") if opened["id"] in r.text)
    assert row.find_element(By.CSS_SELECTOR, "td.status").text == "open"
    check_page(driver, world)
    shot(driver, "sessions")
    click(driver, By.CSS_SELECTOR, f"button[aria-label='Revoke session {opened['id']}']")
    assert driver.current_url == world["base"] + "/sessions"
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr") if opened["id"] in r.text)
    assert row.find_element(By.CSS_SELECTOR, "td.status").text.startswith("revoked at")
    # The API agrees: the session predicts no more.
    status, _, _ = cofferlib.http_json(world["base"], "POST", f"/v1/sessions/{opened['id']}/predict", token=world["tokens"]["bob-infer"],
                                       body={"rows": [{"x0": 0.1, "x1": 0.2, "x2": 0.3}]})
    assert status == 403


def test_an_admin_points_an_alias_from_the_model_page(driver, world):
    sign_in(driver, world, "alice", "/model?name=m/census")
    driver.find_element(By.ID, "alias").send_keys("staging")
    click(driver, By.CSS_SELECTOR, "form[action='/alias'] button")
    assert driver.current_url == world["base"] + "/model?name=m%2Fcensus"
    newest = driver.find_element(By.CSS_SELECTOR, "tbody tr")
    assert "staging" in newest.text and newest.find_element(By.TAG_NAME, "a").text == "2"
    check_page(driver, world)


def test_an_admin_lists_tokens_and_never_sees_one(driver, world):
    sign_in(driver, world, "alice")
    click(driver, By.LINK_TEXT, "Tokens")
    ids = [row.find_element(By.TAG_NAME, "code").text for row in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert len(ids) == len(world["tokens"]) and all(len(i) == 16 for i in ids)
    check_page(driver, world)  # no token text on it


def filed_request(driver):
    """The change request (cfr1. ...) the page just shown gives to `coffer approve`."""
    return re.search(r"cfr1\.[A-Za-z0-9_-]+", driver.find_element(By.CSS_SELECTOR, "pre code").text).group(0)


def token_ids(world):
    listed = cofferlib.check(world["coffer"], "token", "list", "--json", "--home", world["home"], env=world["env"])
    return {token["id"] for token in json.loads(listed)}


def post_raw(driver, world, path, fields):
    """A form post with the browser's cookies, as the browser would send it from the page (redirects followed):
    (status, body), the body checked for secrets."""
    data = urllib.parse.urlencode(fields).encode()
    held = driver.get_cookies()
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in held)
    request = urllib.request.Request(world["base"] + path, data=data, method="POST",
                                     headers={"Cookie": cookies, "Origin": world["base"], "Sec-Fetch-Site": "same-origin"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    no_secret(world, held, f"the answer to POST {path}", body)
    return status, body


def page_csrf(driver, world, path):
    """The CSRF token of the signed-in browser's forms, from the page at `path` fetched raw."""
    cookies = driver.get_cookies()
    status, html = raw(world["base"] + path, cookies)
    assert status == 200, html
    no_secret(world, cookies, path, html)
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_an_admin_asks_for_a_token_on_the_page_and_approves_it_with_coffer(driver, world):
    """The token form files a change request: the page shows the token once and `coffer approve ...`; the token
    opens nothing until alice approves with her own key, then signs a browser in; the page revokes it at once."""
    coffer, env = world["coffer"], world["env"]
    sign_in(driver, world, "alice")
    click(driver, By.LINK_TEXT, "Tokens")
    Select(driver.find_element(By.ID, "token-principal")).select_by_visible_text("bob")
    Select(driver.find_element(By.ID, "token-scope")).select_by_visible_text("read")
    ttl = driver.find_element(By.ID, "token-ttl")
    ttl.clear()
    ttl.send_keys("2h")
    click(driver, By.CSS_SELECTOR, "form[action='/tokens'] button")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Change requested"
    token = driver.find_element(By.CSS_SELECTOR, "code.secret").text
    assert re.fullmatch(r"cft_[0-9a-f]{64}", token), token
    request = filed_request(driver)
    shot(driver, "token-request")
    # The answer to a form cannot be fetched again with a GET: the same form, posted without the browser (its cookie
    # and CSRF token), gives the page to the strict parser.
    csrf = page_csrf(driver, world, "/tokens")
    status, html = post_raw(driver, world, "/tokens", {"csrf": csrf, "principal": "bob", "scope": "read", "ttl": "1h"})
    assert status == 200 and "cft_" in html
    strict_html(html, "the token's change request")

    def api_status():
        return cofferlib.http_json(world["base"], "GET", "/v1/sessions", token=token)[0]

    assert api_status() == 401
    shown = cofferlib.check(coffer, "approve", request, "--show", env=env)
    assert "a read token" in shown and "for bob" in shown and "filed by alice" in shown
    assert api_status() == 401, "--show signed nothing"
    # Without a terminal to ask on and without --yes, nothing is unlocked or signed.
    unasked = cofferlib.run(coffer, "approve", request, *world["admin"], env=env)
    assert unasked.returncode == 1 and b"not approved: nothing was signed" in unasked.stderr, unasked.stderr
    assert api_status() == 401
    before = token_ids(world)
    approved = cofferlib.check(coffer, "approve", request, "--yes", *world["admin"], env=env)
    assert approved.startswith("approved: a read token"), approved
    assert api_status() == 200
    (token_id,) = token_ids(world) - before
    again = cofferlib.run(coffer, "approve", request, "--yes", *world["admin"], env=env)
    assert again.returncode != 0 and b"was approved already" in again.stderr and b"Traceback" not in again.stderr
    # The new token signs a browser in; then alice revokes it from the list at once.
    driver.delete_all_cookies()
    driver.get(world["base"] + "/models")
    driver.find_element(By.ID, "token").send_keys(token)
    click(driver, By.CSS_SELECTOR, "form.card button[type=submit]")
    assert driver.current_url == world["base"] + "/models"
    driver.delete_all_cookies()
    sign_in(driver, world, "alice")
    click(driver, By.LINK_TEXT, "Tokens")
    click(driver, By.CSS_SELECTOR, f"button[aria-label='Revoke token {token_id}']")
    assert api_status() == 401


def test_an_admin_asks_for_a_grant_on_the_page_and_approves_it_with_coffer(driver, world):
    coffer, env = world["coffer"], world["env"]
    sign_in(driver, world, "alice")
    click(driver, By.LINK_TEXT, "Principals")
    check_page(driver, world)
    shot(driver, "principals")
    Select(driver.find_element(By.ID, "grant-principal")).select_by_visible_text("bob")
    Select(driver.find_element(By.ID, "grant-role")).select_by_visible_text("publisher")
    scope = driver.find_element(By.ID, "grant-scope")
    scope.clear()
    scope.send_keys("m/census")
    click(driver, By.CSS_SELECTOR, "form[action='/grants'] button")
    assert "grant bob publisher on m/census" in driver.find_element(By.TAG_NAME, "strong").text
    assert "cft_" not in driver.page_source
    request = filed_request(driver)
    # The same page, asked for without the browser (an answer to a post), for the strict parser.
    csrf = page_csrf(driver, world, "/principals")
    status, html = post_raw(driver, world, "/grants", {"csrf": csrf, "principal": "bob", "role": "reader", "scope": "m/risk"})
    assert status == 200 and "<h1>Change requested</h1>" in html and "grant bob reader on m/risk" in html, html
    strict_html(html, "the grant's change request")
    listed = lambda: cofferlib.check(coffer, "principal", "list", "--home", world["home"], env=env)  # noqa: E731
    assert "publisher on m/census" not in listed()
    cofferlib.check(coffer, "approve", request, "--yes", *world["admin"], env=env)
    assert "publisher on m/census" in listed()
    # Its revocation, asked for from the grant's own button.
    driver.get(world["base"] + "/principals")
    click(driver, By.CSS_SELECTOR, "button[aria-label=\"Ask to revoke bob's publisher on m/census\"]")
    revoke = filed_request(driver)
    cofferlib.check(coffer, "approve", revoke, "--yes", *world["admin"], env=env)
    assert "publisher on m/census" not in listed()


def test_a_page_on_another_port_cannot_sign_the_browser_in(driver, world):
    """Login CSRF from a neighbour: a service on another port of the same host is the same site to the browser, and
    cookies ignore ports, so it can plant a sign-in cookie (even a `__Host-` one: loopback is a secure origin) and post
    the sign-in form with the attacker's own token. The server refuses the post by its Origin and Sec-Fetch-Site."""
    attacker = world["tokens"]["bob"]
    target = world["base"] + "/signin"

    class Neighbour(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = (f'<!DOCTYPE html><html lang="en"><head><title>x</title></head><body>'
                    f'<form method="post" action="{target}"><input name="csrf" value="planted">'
                    f'<input name="token" value="{attacker}"><button id="go" type="submit">go</button></form></body></html>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Set-Cookie", f"{SIGNIN}=planted; Secure; Path=/; SameSite=Lax")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    neighbour = http.server.ThreadingHTTPServer(("127.0.0.1", cofferlib.free_port()), Neighbour)
    thread = threading.Thread(target=neighbour.serve_forever, daemon=True)
    thread.start()
    try:
        driver.get(f"http://127.0.0.1:{neighbour.server_address[1]}/")
        # The planted cookie took: the prefix alone would not have stopped this neighbour.
        assert [c for c in driver.get_cookies() if c["name"] == SIGNIN and c["value"] == "planted"], driver.get_cookies()
        click(driver, By.ID, "go")
        assert driver.current_url == target
        assert driver.find_element(By.TAG_NAME, "h1").text == "403 Forbidden"
        assert f"posted from another site (Sec-Fetch-Site: same-site)" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
        assert not [c for c in driver.get_cookies() if c["name"] == SESSION], "the browser was signed in as the attacker"
        driver.get(world["base"] + "/models")
        assert "/signin" in driver.current_url
    finally:
        neighbour.shutdown()
        neighbour.server_close()


def test_a_server_with_tls_takes_posts_from_its_https_origin(world, tmp_path):
    """`coffer serve --tls-cert`: its own origin is https://host:port; a post naming the http origin is refused."""
    cofferlib.self_signed_certificate(tmp_path)
    coffer = cofferlib.coffer_binary()
    port = cofferlib.free_port()
    base = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    context.check_hostname = False
    log = open(tmp_path / "serve.log", "a+b")
    process = subprocess.Popen([coffer, "serve", "--home", world["home"], "--listen", f"127.0.0.1:{port}", "--tls-cert", tmp_path / "cert.pem",
                                "--tls-key", tmp_path / "key.pem"], env=cofferlib.environment(tmp_path), stdout=log, stderr=log)
    try:
        for _ in range(400):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5, context=context):
                    break
            except (urllib.error.URLError, OSError):
                assert process.poll() is None, "coffer serve --tls-cert did not start"
                time.sleep(0.05)
        own = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        status, html, cookies = cofferlib.web_sign_in(base, world["tokens"]["bob"], context=context, headers=own)
        session = [c.split(";")[0].split("=", 1)[1] for c in cookies if c.startswith(SESSION + "=")]
        assert status == 303 and session, html
        assert session[0] not in html, "the session cookie's value is in the sign-in's answer"
        status, html, cookies = cofferlib.web_sign_in(base, world["tokens"]["bob"], context=context, headers={"Origin": f"http://127.0.0.1:{port}"})
        assert status == 403 and f"not from this server ({base})" in html, html
        assert not [c for c in cookies if c.startswith(SESSION + "=")]
    finally:
        cofferlib.stop_server(process)
