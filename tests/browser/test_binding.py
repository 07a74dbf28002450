"""The binding flow in a real browser (headless Chromium), against the release binary.

Starts `marketflow serve --dev` (`$MARKETFLOW_BIN`, default `target/release/marketflow`) on free ports through the
environment variables of DESIGN.md, on a clock 600 times faster than real time so that the marketplace's 1-5 minute
activation takes well under a second. It opens a subscription through the in-process simulator (`/sim/instances`),
waits until the service has it `active` (operator API), takes the signed 免登 URL from `/sim/instances/{id}/sso-url`,
and then, in the browser: follows it -> lands on the login page -> goes to registration -> registers -> lands on the
binding page (绑定云市场订阅). Meanwhile, through the JSON API, another user invites the browser user's e-mail into
their organization as a Member and the browser user accepts. The browser reloads: one bindable organization, one
tagged 权限不足; it confirms (确认绑定), sees the processing page, then the billing overview (帐单概览) with the Aliyun
account ID and the 查看阿里云帐单 link. Screenshots go to the test's temporary directory (or
`$MARKETFLOW_SCREENSHOT_DIR`).

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
import urllib.parse
import urllib.request

from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
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
TIME_SCALE = "600"
ALI_UID = "1688000000000777"
PASSWORD = "correct horse battery"


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


class Mailbox:
    """A real SMTP server (aiosmtpd) on a free port: the service mails its verification links here."""

    def __init__(self):
        self.messages = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(([r.lower() for r in envelope.rcpt_tos], envelope.original_content or envelope.content))
        return "250 OK"

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.controller.port}"

    def verification_link(self, to, timeout=10):
        """The link in the latest mail to `to`, waiting for the mail to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for rcpts, raw in reversed(self.messages):
                if to.lower() in rcpts:
                    body = message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content()
                    m = re.search(r"https?://\S+/verify-email\?token=[0-9a-f]{64}", body)
                    assert m, body
                    return m.group(0)
            assert time.monotonic() < deadline, f"no mail to {to} in {timeout} s"
            time.sleep(0.02)

    def stop(self):
        self.controller.stop()


class Service:
    """`marketflow serve --dev` as a child process: the service and the simulator on free ports."""

    def __init__(self, workdir):
        self.mailbox = Mailbox()
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
                # 10 service minutes are one real second at this scale: give the browser time to follow the link.
                "MARKETFLOW_SSO_WINDOW": "24h",
                "MARKETFLOW_SMTP_URL": self.mailbox.url,
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
        self.mailbox.stop()

    def api(self, method, path, body=None, token=None):
        return call(method, f"{self.url}{path}", body, token)

    def sim(self, method, path, body=None):
        status, v = call(method, f"{self.sim_url}{path}", body)
        assert 200 <= status < 300, f"simulator {path}: {status} {v}"
        return v

    def active_subscription(self, ali_uid):
        """Opens an instance on the marketplace and waits until the service has it active."""
        v = self.sim("POST", "/sim/instances", {"ali_uid": ali_uid})
        instance = v.get("instance_id") or v.get("order_biz_id")
        assert instance, v
        deadline = time.monotonic() + 30
        while True:
            status, e = self.api("GET", f"/api/v1/ops/entities/subscription/{instance}", token=OPERATOR_TOKEN)
            if status == 200 and e.get("state") == "active":
                return instance
            assert time.monotonic() < deadline, f"{instance} never became active: {status} {e}\n{self.log_tail()}"
            time.sleep(0.05)

    def register(self, email, name):
        status, v = self.api("POST", "/api/v1/accounts", {"email": email, "password": PASSWORD, "name": name})
        assert status == 201, f"register {email}: {status} {v}"
        return v

    def login(self, email):
        status, v = self.api("POST", "/api/v1/sessions", {"email": email, "password": PASSWORD})
        assert status == 201, f"login {email}: {status} {v}"
        return v["token"]


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


def test_register_from_sso_bind_and_see_the_billing_overview(service, browser, shots):
    instance = service.active_subscription(ALI_UID)
    email = f"buyer-{instance}@example.com"

    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1100, "height": 900})
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # 免登: the signed link from the marketplace console. No session yet: to the login page, with the grant.
    sso_url = service.sim("GET", f"/sim/instances/{instance}/sso-url")["url"]
    started = time.monotonic()
    page.goto(sso_url)
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fbind%2F" + instance + r"$"))
    expect(page.locator("h1")).to_have_text("登录")
    expect(page.locator(".notice.info")).to_contain_text("免登")
    page.screenshot(path=os.path.join(shots, "1-login.png"), full_page=True)

    # Register instead, keeping where to go next.
    page.click("#register-link")
    expect(page).to_have_url(re.compile(r"/register\?next=%2Fbind%2F" + instance + r"$"))
    page.fill("input[name=email]", email)
    page.fill("input[name=name]", "Browser Buyer")
    page.fill("input[name=password]", PASSWORD)
    page.click("#register-submit")

    # The binding page: the subscription, and the user's own organization (Owner), bindable.
    expect(page).to_have_url(f"{service.url}/bind/{instance}")
    took = time.monotonic() - started
    print(f"免登 link to the binding page in {took:.2f} s")
    expect(page.locator("h1")).to_have_text("绑定云市场订阅")
    expect(page.locator("#instance-id")).to_have_text(instance)
    expect(page.locator("#aliyun-account-id")).to_have_text(ALI_UID)
    expect(page.locator("#orgs li.org")).to_have_count(1)
    expect(page.locator("#orgs li.org[data-bindable=true]")).to_have_count(1)
    page.screenshot(path=os.path.join(shots, "2-bind-one-org.png"), full_page=True)

    # Meanwhile another user invites the buyer into their organization as a Member, and the buyer accepts.
    other = service.register(f"owner-{instance}@example.com", "Other Owner")
    other_token = service.login(f"owner-{instance}@example.com")
    status, inv = service.api(
        "POST", f"/api/v1/orgs/{other['org_id']}/invitations", {"email": email, "role": "member"}, token=other_token
    )
    assert status == 201, inv
    # The invitation is for a verified address only: the buyer opens the link the service mailed, in a new tab.
    buyer_token = service.login(email)
    status, refused = service.api("POST", f"/api/v1/invitations/{inv['invitation_id']}/accept", token=buyer_token)
    assert (status, refused["code"]) == (403, "email_unverified"), refused
    tab = ctx.new_page()
    tab.goto(service.mailbox.verification_link(email))
    expect(tab.locator("h1")).to_have_text("邮箱已验证")
    tab.screenshot(path=os.path.join(shots, "2a-email-verified.png"), full_page=True)
    tab.close()
    status, acc = service.api("POST", f"/api/v1/invitations/{inv['invitation_id']}/accept", token=buyer_token)
    assert status == 200, acc

    # Reload: one bindable organization and one tagged 权限不足 (no radio button on it).
    page.reload()
    orgs = page.locator("#orgs li.org")
    expect(orgs).to_have_count(2)
    bindable = page.locator("#orgs li.org[data-bindable=true]")
    expect(bindable).to_have_count(1)
    member = page.locator(f"#orgs li.org[data-org-id={other['org_id']}]")
    expect(member).to_have_attribute("data-bindable", "false")
    expect(member.locator(".tag")).to_have_text("权限不足")
    expect(member.locator("input[type=radio]")).to_have_count(0)
    expect(member.locator(".role")).to_have_text("组织成员")
    expect(bindable.locator(".role")).to_have_text("组织所有者")
    expect(bindable.locator("input[type=radio]")).to_be_checked()
    confirm = page.locator("#confirm")
    expect(confirm).to_have_text("确认绑定")
    expect(confirm).to_be_enabled()
    page.screenshot(path=os.path.join(shots, "3-bind-two-orgs.png"), full_page=True)
    own_org = bindable.get_attribute("data-org-id")

    # Confirm: the processing page ("正在处理您的授权请求"), then success with the way to the billing overview.
    confirm.click()
    expect(page).to_have_url(f"{service.url}/bind/{instance}/processing")
    expect(page.locator("#processing")).to_be_visible()
    page.screenshot(path=os.path.join(shots, "4-processing.png"), full_page=True)
    go = page.locator("#go-billing")
    expect(go).to_be_visible()
    expect(go).to_have_text("前往帐单概览")
    expect(page.locator("#processing")).to_have_attribute("data-status", "bound")
    page.screenshot(path=os.path.join(shots, "5-bound.png"), full_page=True)

    # The billing overview: active, the 云市场扣费渠道 with the subscribing Aliyun account and the bill link.
    go.click()
    expect(page).to_have_url(f"{service.url}/orgs/{own_org}/billing")
    expect(page.locator("h1")).to_have_text("帐单概览")
    expect(page.locator("#billing-status")).to_have_text("正常")
    expect(page.locator("#channel h2")).to_have_text("云市场扣费渠道")
    expect(page.locator("#channel-aliyun-account-id")).to_have_text(ALI_UID)
    expect(page.locator("#channel-instance-id")).to_have_text(instance)
    bill = page.locator("#bill-link")
    expect(bill).to_contain_text("查看阿里云帐单")
    assert (bill.get_attribute("href") or "").startswith("https://"), bill.get_attribute("href")
    expect(page.locator("#history tr[data-kind=bound]")).to_have_count(1)
    page.screenshot(path=os.path.join(shots, "6-billing.png"), full_page=True)

    # The same page in English.
    page.goto(f"{service.url}/orgs/{own_org}/billing?lang=en")
    expect(page.locator("h1")).to_have_text("Billing overview")
    expect(page.locator("#bill-link")).to_contain_text("View the Aliyun bill")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.screenshot(path=os.path.join(shots, "7-billing-en.png"), full_page=True)

    # The Member may not see the other organization's billing page.
    page.goto(f"{service.url}/orgs/{other['org_id']}/billing?lang=zh")
    expect(page.locator("h1")).to_have_text("权限不足")

    # Without a session, a page sends the browser to log in and come back.
    anon = browser.new_context(locale="zh-CN")
    p2 = anon.new_page()
    p2.goto(f"{service.url}/orgs/{own_org}/billing")
    expect(p2).to_have_url(f"{service.url}/login?next=%2Forgs%2F{own_org}%2Fbilling")
    anon.close()

    assert not errors, f"JavaScript errors: {errors}"
    ctx.close()


def test_processing_script_polls_until_the_binding_is_decided(service, browser):
    """The processing page's script (served by the service) polls the subscription and reloads once decided.

    The binding is decided in milliseconds in the flow above, so the page is rendered already decided there; here
    the page and the API answers are stubbed in the browser to keep it pending for a few polls.
    """
    ctx = browser.new_context(locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    polls = []

    def api(route):
        polls.append(route.request.headers.get("accept"))
        status = "pending" if len(polls) < 3 else "bound"
        route.fulfill(status=200, content_type="application/json", body=json.dumps({"binding": {"status": status}}))

    loads = []

    def processing(route):
        loads.append(1)
        if len(loads) == 1:
            html = (
                '<!doctype html><html><head><script src="/assets/app.js" defer></script></head><body>'
                '<section id="processing" data-status="pending" '
                'data-poll="/api/v1/marketplace/aliyun/subscriptions/x-1">pending</section></body></html>'
            )
        else:
            html = '<!doctype html><html><body><section id="processing" data-status="bound">bound</section></body></html>'
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)

    page.route("**/api/v1/marketplace/aliyun/subscriptions/x-1", api)
    page.route("**/bind/x-1/processing", processing)
    page.goto(f"{service.url}/bind/x-1/processing")
    expect(page.locator("#processing")).to_have_attribute("data-status", "bound", timeout=15_000)
    assert len(polls) == 3, polls
    assert polls[0] == "application/json"
    assert len(loads) == 2
    assert not errors, errors
    ctx.close()
