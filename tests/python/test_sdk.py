"""The official Python SDK (alibabacloud-market20151101) against `marketflow simulate`.

Starts the built binary (`$MARKETFLOW_BIN`, default `target/release/marketflow`) as `marketflow simulate` on a free
port through the environment variables of DESIGN.md, with a tiny SPI receiver standing in for the service (it checks
every call's MD5 token with its own implementation of the rule), opens instances through `/sim/instances`, then calls
DescribeInstance and PushMeteringData through the SDK: signed with the right secret (V3, the SDK's default, and the
legacy RPC signature) they are accepted; with a wrong secret or an unknown AccessKey they are refused with the
gateway's codes.

    python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt
    cargo build --release && .venv/bin/pytest -q tests/python
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alibabacloud_market20151101 import models as market_models
from alibabacloud_market20151101.client import Client as MarketClient
from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException

try:  # tea-openapi >= 0.4
    from alibabacloud_tea_openapi.utils_models import Config
except ImportError:  # older releases
    from alibabacloud_tea_openapi.models import Config

ISV_KEY = "sdk-test-isv-key"
AK_ID = "sdk-test-ak"
AK_SECRET = "sdk-test-ak-secret"
PRODUCT = "cmgj00063418"
ASSIST = f"{PRODUCT}-Frequency-1"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spi_token(params, key=ISV_KEY):
    """MD5 over every parameter but token, sorted by name, joined k=v with &, then &key=<ISV key>."""
    items = sorted((k, v) for k, v in params.items() if k != "token")
    return hashlib.md5(("&".join(f"{k}={v}" for k, v in items) + "&key=" + key).encode()).hexdigest()


class SpiReceiver:
    """Plays the service's SPI endpoint: verifies tokens, records calls, answers like marketflow would."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                parsed = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    params.update(urllib.parse.parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                token_ok = params.get("token") == spi_token(params)
                with receiver.lock:
                    receiver.calls.append((params, token_ok))
                if parsed.path != "/aliyun/spi" or not token_ok:
                    body, status = {"success": False, "message": "bad token or path"}, 401
                elif params.get("action") == "createInstance":
                    body, status = {
                        "instanceId": params["orderBizId"],
                        "appInfo": {"authUrl": f"http://127.0.0.1:{receiver.port}/aliyun/sso"},
                    }, 200
                else:
                    body, status = {"success": True}, 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, action):
        with self.lock:
            return [(p, ok) for p, ok in self.calls if p.get("action") == action]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Simulator:
    """`marketflow simulate` as a child process, configured through its environment variables."""

    def __init__(self, service_url):
        binary = os.environ.get("MARKETFLOW_BIN") or os.path.join(REPO, "target", "release", "marketflow")
        if not os.path.isfile(binary):
            pytest.fail(f"no marketflow binary at {binary}: run `cargo build --release` or set MARKETFLOW_BIN")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="marketflow-sdk-")
        env = dict(os.environ)
        env.update({
            "MARKETFLOW_SIMULATOR_LISTEN": f"127.0.0.1:{self.port}",
            "MARKETFLOW_SIMULATOR_SERVICE_URL": service_url,
            "MARKETFLOW_ALIYUN_ISV_KEY": ISV_KEY,
            "MARKETFLOW_ALIYUN_ACCESS_KEY_ID": AK_ID,
            "MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET": AK_SECRET,
            "MARKETFLOW_ALIYUN_PRODUCT_CODE": PRODUCT,
            "MARKETFLOW_TIME_SCALE": "1",
        })
        self.log_path = os.path.join(self.dir, "simulate.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "simulate"], env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`marketflow simulate` exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"`marketflow simulate` did not answer /healthz within 30 s:\n{self.log_text()}")

    def log_text(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def open_instance(self, ali_uid):
        status, created = self.call("POST", "/sim/instances",
                                    {"ali_uid": ali_uid, "activation_after_seconds": 0, "order_pay": False})
        assert status == 201, created
        instance_id = created["instance_id"]
        deadline = time.time() + 15
        while time.time() < deadline:
            _, inst = self.call("GET", f"/sim/instances/{instance_id}")
            if inst["status"] == "OPENED":
                return instance_id
            time.sleep(0.05)
        pytest.fail(f"instance {instance_id} did not open: {inst}\n{self.log_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                pytest.fail("SIGTERM did not stop `marketflow simulate` within 15 s")
        return self.proc.returncode


@pytest.fixture(scope="module")
def receiver():
    r = SpiReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sim(receiver):
    s = Simulator(receiver.url)
    yield s
    assert s.stop() == 0, f"`marketflow simulate` must exit 0 on SIGTERM:\n{s.log_text()}"


@pytest.fixture(scope="module")
def instances(sim):
    """Three OPENED instances: one for V3 calls, one for RPC calls, one for refused pushes (the marketplace accepts
    one push per instance per 60 s)."""
    return [sim.open_instance(f"12345678{i}") for i in range(3)]


def sdk(sim, secret=AK_SECRET, access_key_id=AK_ID, rpc=False):
    config = Config(access_key_id=access_key_id, access_key_secret=secret, endpoint=f"127.0.0.1:{sim.port}",
                    protocol="http", read_timeout=10000, connect_timeout=5000)
    if rpc:
        config.signature_algorithm = "v2"
    return MarketClient(config)


def last_hour_metering(instance_id, value, minutes=60):
    """Usage of the last full hour (pushed well before the end of the next hour)."""
    start = int(time.time()) // 3600 * 3600 - 3600
    return json.dumps([{
        "InstanceId": str(instance_id),
        "StartTime": str(start),
        "EndTime": str(start + minutes * 60),
        "Entities": [{"Key": "Frequency", "Value": str(value), "meteringAssit": ASSIST}],
    }])


def test_create_instance_reached_the_service_with_valid_tokens(receiver, instances):
    created = receiver.of("createInstance")
    assert {p["orderBizId"] for p, _ in created} >= set(instances)
    assert all(ok for _, ok in created), created
    for p, _ in created:
        assert p["productCode"] == PRODUCT and p["aliUid"].startswith("12345678")


@pytest.mark.parametrize("rpc", [False, True], ids=["v3", "rpc"])
def test_describe_instance_is_accepted(sim, instances, rpc):
    resp = sdk(sim, rpc=rpc).describe_instance(market_models.DescribeInstanceRequest(instance_id=int(instances[0])))
    assert resp.status_code == 200
    assert resp.body.status == "OPENED"
    assert str(resp.body.instance_id) == instances[0]
    assert resp.body.product_code == PRODUCT
    assert "/aliyun/sso" in resp.body.app_json


@pytest.mark.parametrize("rpc,index", [(False, 0), (True, 1)], ids=["v3", "rpc"])
def test_push_metering_data_is_accepted_and_recorded(sim, instances, rpc, index):
    instance_id = instances[index]
    resp = sdk(sim, rpc=rpc).push_metering_data(
        market_models.PushMeteringDataRequest(metering=last_hour_metering(instance_id, 1250)))
    assert resp.status_code == 200
    assert resp.body.success is True
    status, seen = sim.call("GET", f"/sim/metering?instance_id={instance_id}")
    assert status == 200
    assert [r["request_id"] for r in seen["records"]] == [resp.body.request_id]
    assert seen["totals"] == {"Frequency": 1250}


@pytest.mark.parametrize("rpc", [False, True], ids=["v3", "rpc"])
@pytest.mark.parametrize("action", ["describe", "push"])
def test_a_wrong_secret_is_refused(sim, instances, rpc, action):
    client = sdk(sim, secret="not-the-secret", rpc=rpc)
    with pytest.raises(ClientException) as err:
        if action == "describe":
            client.describe_instance(market_models.DescribeInstanceRequest(instance_id=int(instances[2])))
        else:
            client.push_metering_data(
                market_models.PushMeteringDataRequest(metering=last_hour_metering(instances[2], 1)))
    assert err.value.code == "SignatureDoesNotMatch"
    assert err.value.status_code == 400
    assert err.value.request_id not in (None, "", "None")
    _, seen = sim.call("GET", f"/sim/metering?instance_id={instances[2]}")
    assert seen["records"] == []


def test_an_unknown_access_key_is_refused(sim, instances):
    with pytest.raises(ClientException) as err:
        sdk(sim, access_key_id="nobody").describe_instance(
            market_models.DescribeInstanceRequest(instance_id=int(instances[0])))
    assert (err.value.code, err.value.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_invalid_metering_is_refused_with_a_code(sim, instances):
    with pytest.raises(ClientException) as err:
        sdk(sim).push_metering_data(
            market_models.PushMeteringDataRequest(metering=last_hour_metering(instances[2], 1, minutes=5)))
    assert err.value.code == "InvalidMetering.TimeWindow"


def test_a_second_push_within_60_seconds_is_throttled(sim):
    instance_id = sim.open_instance("987654321")
    client = sdk(sim)
    first = client.push_metering_data(market_models.PushMeteringDataRequest(metering=last_hour_metering(instance_id, 7)))
    assert first.body.success is True
    with pytest.raises(ThrottlingException) as err:
        client.push_metering_data(market_models.PushMeteringDataRequest(metering=last_hour_metering(instance_id, 7)))
    assert err.value.code == "Throttling.User"
    assert 0 < err.value.retry_after <= 60_000


def test_sso_url_token_verifies(sim, instances):
    status, sso = sim.call("GET", f"/sim/instances/{instances[0]}/sso-url")
    assert status == 200, sso
    query = urllib.parse.urlsplit(sso["url"]).query
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    assert params["action"] == "verify"
    assert params["instanceId"] == instances[0]
    assert params["timeStamp"] == sso["time_stamp"]
    assert params["token"] == spi_token(params)
