"""The operator console in a real browser (headless Chromium), against the release binary.

Starts `marketflow serve --dev` (`$MARKETFLOW_BIN`, default `target/release/marketflow`) on free ports through the
environment variables of DESIGN.md, on a clock 10 times faster than real time: the activation poll runs every 6 real
seconds and the 15-minute activation deadline is 90 real seconds away, so a subscription waits on its activation
timer long enough to be looked at, and its countdown visibly runs. Through the in-process simulator it opens one
subscription that activates, then makes every Market API call fail (`/sim/faults`) and opens a second one, whose
DescribeInstance poll fails until the call needs an operator. Then, in the browser: the console sends it to log in,
it logs in with the operator token and a name, filters the list to subscriptions in `opening` waiting on a timer
(only the second), opens it, sees the state diagram with `opening` highlighted and the activation countdown ticking
(two readings differ, the second smaller), and, with the marketplace answering again, presses "Retry now" on the
failed call with a reason and sees it accepted; the audit trail has the operator's name and reason. Screenshots go to
the test's temporary directory (or `$MARKETFLOW_SCREENSHOT_DIR`).

    apt-get install -y chromium fonts-noto-cjk
    python3 -m venv .venv && .venv/bin/pip install -r tests/browser/requirements.txt
    cargo build --release && .venv/bin/pytest -q tests/browser
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR_TOKEN = "dev-operator-token"  # what `serve --dev` makes
TIME_SCALE = "10"
OPERATOR = "Browser Operator"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None, token=None, timeout=10):
    """An HTTP call with a JSON body; answers (status, parsed JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


class Service:
    """`marketflow serve --dev` as a child process: the service and the simulator on free ports."""

    def __init__(self, workdir):
        binary = os.environ.get("MARKETFLOW_BIN") or os.path.join(REPO, "target", "release", "marketflow")
        if not os.path.isabs(binary):
            binary = os.path.join(REPO, binary)
        if not os.path.isfile(binary):
            pytest.fail(f"no marketflow binary at {binary}: run `cargo build --release` or set MARKETFLOW_BIN")
        port, sim_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        env = dict(os.environ)
        env.update(
            {
                "MARKETFLOW_LISTEN": f"127.0.0.1:{port}",
                "MARKETFLOW_PUBLIC_URL": self.url,
                "MARKETFLOW_SIMULATOR_LISTEN": f"127.0.0.1:{sim_port}",
                "MARKETFLOW_DATA_DIR": os.path.join(workdir, "data"),
                "MARKETFLOW_TIME_SCALE": TIME_SCALE,
                "RUST_LOG": env.get("RUST_LOG", "info"),
            }
        )
        self.log_path = os.path.join(workdir, "service.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--dev"], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"marketflow exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if call("GET", f"{self.url}/healthz", timeout=1)[0] == 200 and call(
                    "GET", f"{self.sim_url}/sim/instances", timeout=1
                )[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"marketflow did not start in 30 s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n=60):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()

    def api(self, method, path, body=None):
        return call(method, f"{self.url}{path}", body, OPERATOR_TOKEN)

    def sim(self, method, path, body=None):
        status, v = call(method, f"{self.sim_url}{path}", body)
        assert 200 <= status < 300, f"simulator {path}: {status} {v}"
        return v

    def open_instance(self, ali_uid, activation_after_seconds):
        v = self.sim(
            "POST",
            "/sim/instances",
            {"ali_uid": ali_uid, "activation_after_seconds": activation_after_seconds, "order_pay": False},
        )
        instance = v.get("instance_id") or v.get("order_biz_id")
        assert instance, v
        return instance

    def wait_entity(self, instance, what, done, timeout=40):
        """Polls the ops API (real time passes: the service clock is scaled) until `done(entity)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            status, e = self.api("GET", f"/api/v1/ops/entities/subscription/{instance}")
            if status == 200 and done(e):
                return e
            assert time.monotonic() < deadline, f"{instance} never {what}: {status} {e}\n{self.log_tail()}"
            time.sleep(0.1)


@pytest.fixture()
def service(tmp_path):
    s = Service(str(tmp_path))
    try:
        yield s
    except BaseException:
        print(s.log_tail())
        raise
    finally:
        s.stop()


@pytest.fixture()
def shots(tmp_path):
    d = os.environ.get("MARKETFLOW_SCREENSHOT_DIR") or str(tmp_path / "screenshots")
    os.makedirs(d, exist_ok=True)
    print(f"screenshots in {d}")
    return d


@pytest.fixture()
def browser():
    if not os.path.isfile(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_BIN)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def seconds(text):
    """`in 13m 5s` -> 785 (service seconds remaining, as the console writes them)."""
    m = re.fullmatch(r"in (?:(\d+)d )?(?:(\d+)h )?(?:(\d+)m )?(?:(\d+)s)?", text.strip())
    assert m, f"a countdown: {text!r}"
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def test_filter_open_watch_the_countdown_and_retry_a_failed_call(service, browser, shots):
    # One subscription that activates (no timer left), then one whose Market calls fail until an operator is needed.
    active = service.open_instance("1688000000000811", 60)
    service.wait_entity(active, "became active", lambda e: e.get("state") == "active")
    service.sim("POST", "/sim/faults", {"openapi_error_rate": 1.0, "seed": 3})
    failing = service.open_instance("1688000000000812", 3600)
    e = service.wait_entity(failing, "needed attention", lambda e: e.get("needs_attention") is True)
    assert e["state"] == "opening", e

    ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # No session: the console sends the browser to its login page, then back.
    page.goto(f"{service.url}/console")
    expect(page).to_have_url(f"{service.url}/console/login?next=%2Fconsole")
    page.fill("input[name=operator]", OPERATOR)
    page.fill("input[name=token]", "not-the-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_attribute("data-code", "invalid_token")
    page.screenshot(path=os.path.join(shots, "console-1-login-refused.png"), full_page=True)
    page.fill("input[name=token]", OPERATOR_TOKEN)
    page.click("#login-submit")
    expect(page).to_have_url(f"{service.url}/console")
    expect(page.locator("#operator-name")).to_have_text(OPERATOR)
    expect(page.locator(f"#entities tr.entity[data-id='{active}']")).to_have_count(1)

    # Filter: subscriptions in `opening`, waiting on a timer. Only the failing one.
    page.select_option("#f-kind", "subscription")
    page.fill("#f-state", "opening")
    page.check("#f-timer")
    page.click("#apply-filters")
    expect(page).to_have_url(re.compile(r"/console\?kind=subscription&state=opening&.*waiting_on_timer=true"))
    rows = page.locator("#entities tr.entity")
    expect(rows).to_have_count(1)
    row = page.locator(f"#entities tr.entity[data-id='{failing}']")
    expect(row).to_have_attribute("data-state", "opening")
    page.screenshot(path=os.path.join(shots, "console-2-filtered.png"), full_page=True)

    # Open it: the diagram from the definition with `opening` highlighted, and the countdown to its deadline.
    row.locator("a").first.click()
    expect(page).to_have_url(f"{service.url}/console/entities/subscription/{failing}")
    current = page.locator("svg.diagram g.state[data-current=true]")
    expect(current).to_have_count(1)
    expect(current).to_have_attribute("data-state", "opening")
    expect(page.locator("svg.diagram g.state")).to_have_count(6)
    expect(page.locator("#entity-state")).to_have_text("opening")
    countdown = page.locator("#timers tr[data-name='activation-deadline'] .countdown")
    first = countdown.text_content()
    expect(countdown).not_to_have_text(first)  # it ticks (10 service seconds per real second)
    second = countdown.text_content()
    assert seconds(second) < seconds(first), (first, second)
    page.screenshot(path=os.path.join(shots, "console-3-entity.png"), full_page=True)

    # The marketplace answers again; retry the failed call with a reason.
    service.sim("POST", "/sim/faults", {"openapi_error_rate": 0.0})
    failed = page.locator("#calls tr.call[data-status=needs_attention]").first
    expect(failed).to_be_visible()
    call_id = failed.get_attribute("data-call-id")
    retry = failed.locator("form[data-action=retry]")
    retry.locator("input[name=reason]").fill("marketplace is back")
    retry.locator("button").click()
    result = page.locator("#action-result")
    expect(result).to_have_attribute("data-status", "ok")
    expect(result).to_have_attribute("data-action", "retry")
    expect(result).to_contain_text(call_id)
    page.screenshot(path=os.path.join(shots, "console-4-retried.png"), full_page=True)

    # Audited like the API: who, what, why.
    status, trail = service.api("GET", "/api/v1/ops/audit")
    assert status == 200, trail
    entry = trail["items"][0]
    assert (entry["operator"], entry["action"], entry["reason"]) == (OPERATOR, "retry", "marketplace is back"), entry
    assert entry["entity"] == f"subscription/{failing}", entry
    page.goto(f"{service.url}/console/audit")
    expect(page.locator(f"#audit tr.audit[data-operator='{OPERATOR}']")).to_have_count(1)

    assert not errors, f"JavaScript errors: {errors}"
    ctx.close()
