"""Gives the service under schemathesis something to find: an active subscription opened through the in-process
simulator, a registered user who came through its 免登 link and bound it to their organization, an hour of usage,
an invitation, and an operator action in the audit trail. Prints `export NAME=value` lines for run.sh, whose
seeded runs pin the path parameters to these ids (seeded.toml).

    python3 tests/schemathesis/seed.py http://127.0.0.1:8080 http://127.0.0.1:9090
"""
import datetime
import json
import shlex
import sys
import time
import urllib.error
import urllib.request

OPERATOR = "dev-operator-token"  # what `serve --dev` makes
SERVICE = "dev-service-token"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER.open(req, timeout=10) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def expect(what, status, body, *ok):
    if status not in ok:
        sys.exit(f"seed: {what}: {status} {body}")
    return body


def wait_for(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"seed: {what} did not happen in {timeout} s")
        time.sleep(0.05)


def main(url, sim):
    v = expect("open a subscription", *call("POST", f"{sim}/sim/instances", {"ali_uid": "1688000000000999"}), 200, 201)
    instance = v.get("instance_id") or v.get("order_biz_id")

    def state(kind, id_):
        s, e = call("GET", f"{url}/api/v1/ops/entities/{kind}/{id_}", token=OPERATOR)
        return e.get("state") if s == 200 else None

    wait_for("activation", lambda: state("subscription", instance) == "active")

    email = f"seed-{instance}@example.com"
    v = expect("register", *call("POST", f"{url}/api/v1/accounts",
                                  {"email": email, "password": "correct horse battery", "name": "Seed"}), 201)
    org = v["org_id"]
    v = expect("login", *call("POST", f"{url}/api/v1/sessions", {"email": email, "password": "correct horse battery"}), 201)
    token = v["token"]

    # 免登 with the session: the grant is recorded, the browser would go on to the binding page.
    sso = expect("the 免登 link", *call("GET", f"{sim}/sim/instances/{instance}/sso-url"), 200)["url"]
    expect("免登", *call("GET", sso, token=token), 302)
    expect("bind", *call("POST", f"{url}/api/v1/marketplace/aliyun/subscriptions/{instance}/binding",
                         {"org_id": org}, token=token), 202)
    wait_for("binding", lambda: state("organization", org) == "bound")

    s, h = call("GET", f"{url}/healthz")
    now = datetime.datetime.fromisoformat(h["now"].replace("Z", "+00:00"))
    start = (now - datetime.timedelta(hours=1)).replace(microsecond=0)
    expect("usage", *call("POST", f"{url}/api/v1/usage", {
        "record_id": f"seed-{instance}", "org_id": org, "resource_id": "cluster-1", "cu_type": "performance",
        "cu": 1.5, "start": start.isoformat(), "end": (start + datetime.timedelta(minutes=30)).isoformat(),
    }, token=SERVICE), 201)
    v = expect("invite", *call("POST", f"{url}/api/v1/orgs/{org}/invitations",
                               {"email": "invited@example.com", "role": "member"}, token=token), 201)
    invitation = v["invitation_id"]
    for action in ("pause", "resume"):
        expect(action, *call("POST", f"{url}/api/v1/ops/entities/subscription/{instance}/actions/{action}",
                             {"reason": "seeding the schemathesis run"}, token=OPERATOR), 200)

    for name, value in [("MF_INSTANCE_ID", instance), ("MF_ORG_ID", org), ("MF_SESSION_TOKEN", token),
                        ("MF_INVITATION_ID", invitation)]:
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"))
