"""The dashboard page (issue 13, part 1) in a real headless Chromium (Debian's chromium and
chromedriver, installed by tierstore.services.browser; Selenium drives it through that driver, so
nothing is downloaded and the browser only talks to the loopback router).

Auth is on: the page signs in with an admin key (ingest, query, admin). Every view loads with no
console error and a screenshot of each is written under the test's tmp dir (paths printed); an
ingest shows up in the live leaderboard; the explorer's numbers (series points and chart, top-K,
rank, segments) equal the API's for the same query; "run now" starts a job; a report is created,
followed and downloaded; a real dead letter (PostgreSQL refusing one key) is listed and deleted; an
alert rule created in the page is in the API, fires (the `alerts` job, a loopback webhook receiver)
and shows as firing with its notification, and is deleted.
"""
from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from rollups.timeutil import HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms, parse_time
from router.ui import VIEWS
from tests.api_support import isolated_settings, run_job, served, unique_stream
from tests.test_deadletters import refusing
from tierstore.services.browser import ensure_browser

ADMIN_KEY = "ui-test-admin-key-7f3a9c"
TENANT = "ui"
WAIT_S = 20


@pytest.fixture(scope="module")
def ui_settings(settings):
    grant = {"tenant": TENANT, "scopes": ["ingest", "query", "admin"]}
    return isolated_settings(settings, "ui", redis_db=44).model_copy(
        update={"auth_enabled": True, "api_keys": {ADMIN_KEY: grant}})


@pytest.fixture(scope="module")
def api(ui_settings):
    for server in served(ui_settings):
        server.http.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield server


@pytest.fixture(scope="module")
def data(api):
    """Events of one stream from three hours below the warm boundary up to now (flushed and rolled
    up, so answers cross warm and hot), and the absolute, minute-aligned range the explorer asks for."""
    stream = unique_stream("ui")
    rnd = random.Random(13)
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    start, end = floor_to(b_warm - 3 * HOUR_MS, MINUTE_MS), floor_to(now_ms() - 5 * MINUTE_MS, MINUTE_MS)
    events = [{"stream": stream, "key": f"k{rnd.randrange(15):02d}", "ts": rnd.randrange(start, end),
               "value": rnd.randint(1, 40) / 4} for _ in range(900)]
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"
    return {"stream": stream, "from": format_time(start), "to": format_time(end)}


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ui-screenshots")
    written: list[Path] = []
    yield directory, written
    print("\nscreenshots of the dashboard:\n" + "\n".join(f"  {p}" for p in written))


@pytest.fixture(scope="module")
def browser(ui_settings, tmp_path_factory):
    found = ensure_browser(ui_settings.home / "logs" / "browser.log")
    downloads = tmp_path_factory.mktemp("ui-downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(found.chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,1000",
                "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=ChromeService(executable_path=str(found.chromedriver)), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, api):
    """The browser signed in to the dashboard with the admin key (typed into the page's form)."""
    browser.get(f"{api.url}/ui")
    token = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[name=token]"))
    token.send_keys(ADMIN_KEY)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait_view(browser, "tiers")
    assert_no_console_errors(browser)
    return browser


# ---- helpers -------------------------------------------------------------------------------------

def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def assert_no_console_errors(driver) -> None:
    errors = severe(driver)
    assert not errors, f"console errors: {errors}"


def wait_view(driver, name: str, state: str = "ready") -> None:
    """Wait until view `name` has finished its first load; fail on an error state."""
    def settled(d):
        found = d.find_elements(By.CSS_SELECTOR, f".view-{name}")
        return found and found[0].get_attribute("data-state") in ("ready", "error") and found[0]

    view = WebDriverWait(driver, WAIT_S).until(settled)
    errors = [e.text for e in view.find_elements(By.CSS_SELECTOR, ".error")]
    assert view.get_attribute("data-state") == state and not errors, f"view {name}: {errors}"


def open_view(driver, api, route: str) -> None:
    name = route.split("?")[0]
    driver.get(f"{api.url}/ui#/{route}")
    wait_view(driver, name)


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    # a view re-renders as it refreshes: an element found a moment ago may be gone, so look again
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, message=f"waiting for {what}")


def screenshot(driver, shots, name: str) -> Path:
    directory, written = shots
    height = driver.execute_script("window.scrollTo(0, 0); return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(1000, min(height, 4000)))
    time.sleep(0.3)  # the charts redraw at the new size
    path = directory / f"{len(written) + 1:02d}-{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    written.append(path)
    print(f"screenshot {name}: {path}")
    driver.set_window_size(1440, 1000)
    return path


def rows(driver, selector: str) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => ({...r.dataset}))", selector)


# ---- the page and its files --------------------------------------------------------------------

def test_the_page_and_its_scripts_come_from_the_router_without_credentials(api):
    anonymous = {"Authorization": None}  # no credentials (the session sends the key otherwise)
    page_ = api.get("/ui", headers=anonymous)
    assert page_.status_code == 200 and page_.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page_.headers["Content-Security-Policy"]
    assert api.get("/ui/explore", headers=anonymous).text == page_.text
    missing = api.get("/ui/nothing-here", headers=anonymous)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_view"
    assert api.get("/v1/tiers", headers=anonymous).status_code == 401  # the data still needs a key
    for path in ("/static/ui/app.js", "/static/ui/ui.css", "/static/vendor/echarts/echarts.min.js",
                 "/static/vendor/echarts/LICENSE", "/static/vendor/echarts/NOTICE"):
        r = api.get(path, headers=anonymous)
        assert r.status_code == 200 and r.content, path
    assert "src=\"/static/vendor/echarts/echarts.min.js\"" in page_.text and "://" not in page_.text.split("<body>")[0]
    echarts = api.get("/static/vendor/echarts/echarts.min.js", headers=anonymous).content
    readme = Path(__file__).resolve().parent.parent / "router/static/vendor/echarts/README.md"
    assert hashlib.sha256(echarts).hexdigest() in readme.read_text()  # the npm build, unchanged


def test_every_view_loads_without_console_errors(page, api, data, shots):
    routes = {"tiers": "tiers", "jobs": "jobs", "live": f"live?stream={data['stream']}&window=now-24h",
              "explore": f"explore?stream={data['stream']}&from={data['from']}&to={data['to']}&step=1h&agg=sum"
                         f"&k=10&by=sum&rank=k03",
              "reports": "reports", "deadletters": "deadletters", "alerts": "alerts"}
    assert set(routes) == set(VIEWS)
    for name, route in routes.items():
        open_view(page, api, route)
        if name in ("live", "explore"):
            wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-key]"), f"{name} rows")
        assert page.find_element(By.CSS_SELECTOR, "nav a.active").get_attribute("data-view") == name
        screenshot(page, shots, name)
        assert_no_console_errors(page)
    page.get(f"{api.url}/ui/jobs")  # a view's own path serves the same page
    wait_view(page, "jobs")
    assert_no_console_errors(page)


# ---- live leaderboard ----------------------------------------------------------------------------

def test_an_ingest_shows_up_in_the_live_leaderboard(page, api, shots):
    stream = unique_stream("live")
    r = api.request("PUT", f"/v1/streams/{stream}", json={})  # registered: a stream without data yet is not a 404
    assert r.status_code in (200, 201), r.text
    open_view(page, api, f"live?stream={stream}&window=now-15m&every=1000")
    assert rows(page, "table.leaderboard tbody tr") == []
    now = now_ms()
    events = [{"stream": stream, "key": "song-hit", "ts": now - i} for i in range(5)] + \
             [{"stream": stream, "key": "song-two", "ts": now - 100 - i} for i in range(2)]
    assert api.post("/v1/events", json=events).status_code == 202

    def shown(d):
        got = [(r["rank"], r["key"], float(r["value"])) for r in rows(d, "table.leaderboard tbody tr")]
        return got if got == [("1", "song-hit", 5.0), ("2", "song-two", 2.0)] else None

    wait_for(page, shown, "the ingested keys in the leaderboard", timeout=15)
    screenshot(page, shots, "live-after-ingest")
    assert_no_console_errors(page)


# ---- query explorer --------------------------------------------------------------------------------

def fill(driver, form: str, values: dict) -> None:
    for name, value in values.items():
        el = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        if el.tag_name == "select":
            driver.execute_script("arguments[0].value = arguments[1]", el, value)
        else:
            el.clear()
            el.send_keys(value)


def chart_segments(driver, answer: str) -> list[tuple]:
    data = driver.execute_script(
        "const el = document.querySelector(`.segments-panel[data-answer=${arguments[0]}] .chart`);"
        "return echarts.getInstanceByDom(el).getOption().series[0].data.map(d => d.value);", answer)
    tiers = ["archive", "cold", "warm", "hot"]
    return sorted((tiers[int(v[0])], int(v[1]), int(v[2])) for v in data)


def api_segments(meta: dict) -> list[tuple]:
    return sorted((s["tier"], parse_time(s["from"]), parse_time(s["to"])) for s in meta["segments"])


def test_the_explorers_numbers_equal_the_apis(page, api, data, shots):
    open_view(page, api, "explore")
    query = {"stream": data["stream"], "from": data["from"], "to": data["to"]}
    fill(page, "form.explorer-form", {**query, "step": "1h", "agg": "sum", "k": "7", "by": "sum", "key": ""})
    fill(page, "form.rank-form", {"rank_key": "k04", "around": "3"})
    page.find_element(By.CSS_SELECTOR, "form.explorer-form button.run").click()
    wait_for(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".segments-panel")) == 3
             and d.find_element(By.CSS_SELECTOR, ".view-explore").get_attribute("data-state") == "ready",
             "the three answers")
    assert f"stream={data['stream']}" in page.execute_script("return location.hash")

    series = api.get("/v1/query/series", {**query, "step": "1h", "agg": "sum"}).json()
    want_points = [(p["t"], p["value"]) for p in series["points"]]
    table_points = [(r["t"], float(r["value"]) if r["value"] else None) for r in rows(page, "table.series-points tbody tr")]
    assert table_points == want_points
    drawn = page.execute_script("return echarts.getInstanceByDom(document.querySelector('.chart.series'))"
                                ".getOption().series[0].data")
    assert [(int(t), v) for t, v in drawn] == [(parse_time(t), v) for t, v in want_points]
    assert sum(v for _, v in want_points if v) > 0

    topk = api.get("/v1/query/topk", {**query, "k": 7, "by": "sum"}).json()
    assert [(int(r["rank"]), r["key"], float(r["value"])) for r in rows(page, "table.topk tbody tr")] == \
        [(i["rank"], i["key"], i["value"]) for i in topk["items"]]
    assert len(topk["items"]) == 7

    rank = api.get("/v1/query/rank", {**query, "key": "k04", "by": "sum", "around": 3}).json()
    answer = page.find_element(By.CSS_SELECTOR, ".rank-answer")
    assert (int(answer.get_attribute("data-rank")), float(answer.get_attribute("data-value")),
            int(answer.get_attribute("data-total"))) == (rank["rank"], rank["value"], rank["total_keys"])
    assert [(int(r["rank"]), r["key"], float(r["value"])) for r in rows(page, "table.around tbody tr")] == \
        [(n["rank"], n["key"], n["value"]) for n in rank["around"]]

    for name, body in (("series", series), ("topk", topk), ("rank", rank)):
        assert chart_segments(page, name) == api_segments(body["meta"]), name
        assert {s["tier"] for s in body["meta"]["segments"]} == {"warm", "hot"}, name
    screenshot(page, shots, "explore-form")
    assert_no_console_errors(page)


# ---- jobs: run now -----------------------------------------------------------------------------------

def test_run_now_starts_a_job(page, api, shots):
    open_view(page, api, "jobs")
    page.find_element(By.CSS_SELECTOR, "button.run-now[data-job=flush]").click()
    mine = "tr[data-job=flush] td.mine"
    run_id = wait_for(page, lambda d: d.execute_script(
        "const c = document.querySelector(arguments[0]); return c && c.dataset.status === 'done' && c.dataset.runId",
        mine), "the flush run")
    run = api.get(f"/v1/jobs/runs/{run_id}").json()
    assert (run["job"], run["status"]) == ("flush", "done")
    assert run["requested_by"].startswith(f"api:{TENANT}:key:"), run
    wait_for(page, lambda d: f"#{run_id}" in d.find_element(By.CSS_SELECTOR, "tr[data-job=flush]").text
             and "never" not in d.find_element(By.CSS_SELECTOR, "tr[data-job=flush] td:nth-child(3)").text,
             "the run as the job's last run")
    screenshot(page, shots, "jobs-after-run-now")
    assert_no_console_errors(page)


# ---- reports -----------------------------------------------------------------------------------------

def test_a_report_is_created_followed_and_downloaded(page, api, data, shots):
    assert run_job(api, "flush")["status"] == "done"  # reports read raw events from warm
    open_view(page, api, "reports")
    fill(page, "form.report-form", {"stream": data["stream"], "from": data["from"], "to": data["to"],
                                    "kind": "totals", "format": "csv"})
    page.find_element(By.CSS_SELECTOR, "form.report-form button.create").click()
    done = "table.reports tr[data-status=done]"
    report_id = wait_for(page, lambda d: d.execute_script(
        "const r = document.querySelector(arguments[0]); return r && r.dataset.id", done), "the report", timeout=30)
    status = api.get(f"/v1/reports/{report_id}").json()
    assert status["status"] == "done" and status["rows"] == 15, status
    page.find_element(By.CSS_SELECTOR, f"{done} button.download").click()
    target = page.downloads / f"report-{report_id}.csv"
    wait_for(page, lambda d: target.is_file() and target.stat().st_size > 0, "the downloaded file")
    assert target.read_bytes() == api.get(f"/v1/reports/{report_id}/download").content
    screenshot(page, shots, "reports-done")
    assert_no_console_errors(page)


# ---- alerts ------------------------------------------------------------------------------------------

def test_an_alert_rule_is_created_fires_and_is_deleted(page, api, receiver, shots):
    stream, path = unique_stream("alert"), "/hook/ui"
    open_view(page, api, "alerts")
    fill(page, "form.alert-form", {"name": "ui <b>rule</b>", "stream": stream, "key": "k1", "aggregate": "count",
                                   "window": "5m", "comparison": ">", "threshold": "3",
                                   "webhook_url": receiver.url(path)})
    page.find_element(By.CSS_SELECTOR, "form.alert-form button.create").click()
    [rule] = wait_for(page, lambda d: [r for r in api.get("/v1/alerts").json() if r["stream"] == stream],
                      "the rule in the API")
    assert (rule["name"], rule["key"], rule["kind"], rule["aggregate"], rule["window"], rule["comparison"],
            rule["threshold"], rule["webhook_url"], rule["state"]) == \
        ("ui <b>rule</b>", "k1", "threshold", "count", "5m", ">", 3.0, receiver.url(path), "ok")
    row = f"table.alerts tr[data-id='{rule['id']}']"
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row}[data-state=ok]"), "the rule, ok, in the page")
    assert "ui <b>rule</b>" in page.find_element(By.CSS_SELECTOR, row).text  # shown as text, not markup
    assert not page.find_elements(By.CSS_SELECTOR, f"{row} b")

    now = now_ms()
    r = api.post("/v1/events", json=[{"stream": stream, "key": "k1", "ts": now - MINUTE_MS}] * 5)  # 5 > 3
    assert r.status_code == 202, r.text
    assert run_job(api, "alerts")["status"] == "done"
    assert [p["body"]["event"] for p in receiver.got(path)] == ["firing"]
    page.find_element(By.XPATH, "//div[contains(@class,'view-alerts')]//button[text()='Refresh']").click()
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row}[data-state=firing]"), "the rule firing")
    assert rows(page, f"{row} ul.notifications li") == [{"event": "firing", "status": "sent", "attempts": "1"}]
    assert "200" in page.find_element(By.CSS_SELECTOR, f"{row} ul.notifications li").text
    screenshot(page, shots, "alerts-firing")

    page.find_element(By.CSS_SELECTOR, f"{row} button.delete").click()  # arms
    assert page.find_elements(By.CSS_SELECTOR, row)
    page.find_element(By.CSS_SELECTOR, f"{row} button.delete").click()
    wait_for(page, lambda d: not d.find_elements(By.CSS_SELECTOR, row), "the rule gone")
    assert api.get(f"/v1/alerts/{rule['id']}").status_code == 404
    assert_no_console_errors(page)


# ---- dead letters ------------------------------------------------------------------------------------

def test_a_dead_letter_is_listed_and_deleted(page, api, ui_settings, shots):
    stream = unique_stream("dead")
    ts = now_ms() - HOUR_MS
    events = [{"stream": stream, "key": "poison", "ts": ts}, {"stream": stream, "key": "fine", "ts": ts + 1}]
    with refusing(ui_settings.postgres_url):
        assert api.post("/v1/events", json=events).status_code == 202
        assert run_job(api, "flush")["status"] == "done"
    dead = api.get("/v1/deadletters").json()
    assert [d["stream"] for d in dead] == [stream]
    open_view(page, api, "deadletters")
    row = f"table.deadletters tr[data-id='{dead[0]['id']}']"
    assert "key poison is refused" in page.find_element(By.CSS_SELECTOR, row).text
    screenshot(page, shots, "deadletters-listed")
    page.find_element(By.CSS_SELECTOR, f"{row} button.delete").click()  # arms
    assert page.find_elements(By.CSS_SELECTOR, row)
    page.find_element(By.CSS_SELECTOR, f"{row} button.delete").click()
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".view-deadletters .empty"), "the empty list")
    assert api.get("/v1/deadletters").json() == []
    assert_no_console_errors(page)


# ---- credentials -------------------------------------------------------------------------------------

def test_refused_credentials_bring_back_the_sign_in_form(page, api):
    page.find_element(By.CSS_SELECTOR, "#who button").click()  # sign out
    token = wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, "input[name=token]"), "the sign-in form")
    assert page.execute_script("return sessionStorage.getItem('tierstore.token')") is None
    token.send_keys("not-a-key")
    page.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    text = wait_for(page, lambda d: " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, "form.login .error")),
                    "the 401 message")  # read inside the wait: the form may re-render under us
    assert "401" in text
    assert any("401" in e["message"] for e in severe(page))  # the refused request, and nothing else
    page.find_element(By.CSS_SELECTOR, "input[name=token]").send_keys(ADMIN_KEY)
    page.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait_view(page, "deadletters")
    assert_no_console_errors(page)
