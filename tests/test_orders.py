"""Orders API client (CONTRACT §3, §4) against the real sandbox cloud over loopback HTTP.

httpx.MockTransport appears only where a response must be forged byte by byte (a swapped QR,
a malformed body) or where the contract vector needs a fixed clock and host.
"""
from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from tests.vectors import VECTORS
from tests.fixtures.cloud import TEST_KEY, TEST_MACHINE_ID
from vending import orders, signing
from vending.orders import BadOrder, Order, OrdersClient, Refused, Unreachable, offline_order



class Sleeps(list):
    """Records backoff delays instead of sleeping them: the tests stay fast and can check them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def client_for():
    made: list[OrdersClient] = []

    def make(cloud, **kw) -> OrdersClient:
        kw.setdefault("sleep", Sleeps())
        c = OrdersClient(cloud.base_url, kw.pop("machine_id", TEST_MACHINE_ID),
                         kw.pop("key", TEST_KEY), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def order(client: OrdersClient, session_id: str = "s-1", amount: int = 350) -> Order:
    return client.create_order(3, "cola-330", amount, "CNY", session_id)


# --- signing and the contract vector ----------------------------------------------------------

def test_request_matches_the_contract_http_signature_vector():
    vec = VECTORS["http_signature"]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    client = OrdersClient("https://pay.example.test/api", "VM-0001",
                          bytes.fromhex(VECTORS["machine_key_hex"]), retries=0,
                          clock=lambda: int(vec["timestamp"]),
                          transport=httpx.MockTransport(handler))
    with pytest.raises(Unreachable):
        client.create_order(3, "cola-330", 350, "CNY", "s-7f3a")
    (request,) = seen
    assert request.method == vec["method"]
    assert request.url.raw_path.decode() == vec["target"]
    assert request.content == vec["body"].encode()
    assert request.headers["X-Machine-Id"] == "VM-0001"
    assert request.headers["X-Timestamp"] == vec["timestamp"]
    assert request.headers["X-Signature"] == vec["x_signature"]


def test_server_verifies_signature_with_base_url_prefix(cloud, client_for):
    got = order(client_for(cloud))
    (req,) = cloud.api_requests()
    # the cloud checks X-Signature over the full target it received; a client signing only
    # "/v1/orders" would have got 401 here
    assert req["target"] == "/api/v1/orders" and req["status"] == 201
    assert got.qr_url == f"{cloud.pay_base_url}/q/{got.order_id}"
    assert (got.amount, got.currency, got.slot, got.session_id, got.offline) == \
        (350, "CNY", 3, "s-1", False)
    (rec,) = cloud.orders()
    assert (rec["order_id"], rec["expires_at"], rec["state"]) == \
        (got.order_id, got.expires_at, "pending")


def _signed(cloud, method: str, path: str, body: bytes, *, sign_body: bytes | None = None,
            target: str | None = None) -> httpx.Response:
    ts = str(int(time.time()))
    sig = signing.http_signature(TEST_KEY, method, target or "/api" + path, ts,
                                 body if sign_body is None else sign_body)
    return httpx.request(method, cloud.base_url + path, content=body, headers={
        "X-Machine-Id": TEST_MACHINE_ID, "X-Timestamp": ts, "X-Signature": sig})


def test_server_checks_every_signed_part(cloud):
    body = json.dumps({"machine_id": TEST_MACHINE_ID, "slot": 3, "product_id": "p",
                       "amount": 350, "currency": "CNY", "session_id": "s-raw"}).encode()
    assert _signed(cloud, "POST", "/v1/orders", body).status_code == 201  # the baseline
    tampered = body.replace(b"350", b"1")
    assert _signed(cloud, "POST", "/v1/orders", tampered, sign_body=body).status_code == 401
    no_prefix = _signed(cloud, "POST", "/v1/orders", body, target="/v1/orders")
    assert no_prefix.status_code == 401 and "X-Signature" in no_prefix.json()["error"]
    assert httpx.post(cloud.base_url + "/v1/orders", content=body).status_code == 401
    assert len(cloud.orders()) == 1


def test_server_names_the_bad_field_in_a_signed_order_request(cloud):
    body = json.dumps({"machine_id": TEST_MACHINE_ID, "slot": 3, "product_id": "p",
                       "amount": 3.5, "currency": "CNY", "session_id": "s-raw"}).encode()
    reply = _signed(cloud, "POST", "/v1/orders", body)
    assert reply.status_code == 400 and reply.json()["error"].startswith("amount ")
    assert cloud.orders() == []


def test_wrong_key_is_refused_401_and_not_retried(cloud, client_for):
    client = client_for(cloud, key=bytes(32), retries=3)
    with pytest.raises(Refused) as info:
        order(client)
    assert info.value.status == 401 and "X-Signature" in info.value.body
    assert not info.value.retryable
    assert len(cloud.api_requests()) == 1 and client._sleep == []
    assert cloud.orders() == []


def test_a_stale_timestamp_teaches_the_offset_and_the_request_is_signed_again(cloud, client_for, caplog):
    # A machine without a battery-backed clock, 1000 s behind: the first try is refused for its
    # X-Timestamp, its Date reveals the offset, and one re-signed try goes through.
    client = client_for(cloud, clock=lambda: time.time() - 1000)
    with caplog.at_level(logging.WARNING, logger="vending.orders"):
        got = order(client)
    assert got.order_id and client._sleep == []              # no backoff for the re-sign
    # Date has one-second resolution, so the learned offset is 1000 give or take a second
    assert 998 <= client.clock_offset <= 1001
    assert "clock offset" in caplog.text
    reqs = cloud.api_requests()
    assert [r["status"] for r in reqs] == [401, 201]
    assert abs(int(reqs[1]["timestamp"]) - time.time()) < 5
    # Later requests are signed with the corrected time straight away.
    client.get_order(got.order_id)
    assert cloud.api_requests()[-1]["status"] == 200 and len(cloud.api_requests()) == 3


def test_a_refusal_that_teaches_nothing_new_is_not_signed_again(cloud, client_for):
    client = client_for(cloud, clock=lambda: time.time() - 1000)
    order(client)                                  # learns the offset
    before = len(cloud.api_requests())
    with pytest.raises(Refused) as info:           # a 404 is a refusal the clock does not explain
        client.get_order("o-nope")
    assert info.value.status == 404 and len(cloud.api_requests()) == before + 1


def test_small_offset_is_learned_without_a_warning(cloud, client_for, caplog):
    client = client_for(cloud)
    with caplog.at_level(logging.WARNING, logger="vending.orders"):
        order(client)
    assert client.clock_offset is not None and abs(client.clock_offset) <= 2
    assert "clock offset" not in caplog.text


# --- idempotency and retries --------------------------------------------------------------------

def test_same_session_returns_the_same_order_and_other_body_gets_409(cloud, client_for):
    client = client_for(cloud)
    first = order(client, "s-idem")
    assert order(client, "s-idem") == first
    with pytest.raises(Refused) as info:
        order(client, "s-idem", amount=351)
    assert info.value.status == 409
    assert len(cloud.orders()) == 1
    assert [r["status"] for r in cloud.api_requests()] == [201, 201, 409]


def test_timeout_retry_repeats_the_identical_body_and_gets_the_same_order(cloud, client_for):
    # the server creates the order, then answers after the client has given up (a lost reply)
    cloud.set_api_mode("slow", requests=1, delay=2.0)
    client = client_for(cloud, timeout=0.3, retries=2, backoff=0.2)
    got = order(client, "s-lost-reply")
    posts = cloud.api_requests()
    assert [p["mode"] for p in posts] == ["slow", "ok"]
    assert posts[0]["body"] == posts[1]["body"]
    assert len(cloud.orders()) == 1 and cloud.orders()[0]["order_id"] == got.order_id
    assert len(client._sleep) == 1 and 0.1 <= client._sleep[0] <= 0.2


def test_503_is_retried_with_growing_backoff(cloud, client_for):
    cloud.set_api_mode("down", requests=2)
    client = client_for(cloud, retries=3, backoff=0.2)
    got = order(client)
    assert [r["status"] for r in cloud.api_requests()] == [503, 503, 201]
    first, second = client._sleep
    assert 0.1 <= first <= 0.2 and 0.2 <= second <= 0.4
    assert got.order_id == cloud.orders()[0]["order_id"]


def test_503_on_every_attempt_is_unreachable(cloud, client_for):
    cloud.set_api_mode("down")
    client = client_for(cloud, retries=2)
    with pytest.raises(Unreachable) as info:
        order(client)
    assert info.value.retryable and "HTTP 503" in str(info.value)
    assert len(cloud.api_requests()) == 3 and len(client._sleep) == 2


def test_timeouts_on_every_attempt_are_unreachable(cloud, client_for):
    cloud.set_api_mode("slow", delay=2.0)
    client = client_for(cloud, timeout=0.2, retries=1)
    with pytest.raises(Unreachable, match="Timeout"):
        order(client)
    assert len(cloud.api_requests()) == 2


def test_refused_connection_is_unreachable_then_recovers_on_the_same_url(cloud, client_for):
    client = client_for(cloud, retries=2)
    cloud.set_api_mode("refuse")
    with pytest.raises(Unreachable, match="ConnectError"):
        order(client, "s-a")
    assert len(client._sleep) == 2 and cloud.api_requests() == []
    cloud.set_api_mode("ok")
    assert order(client, "s-a").order_id == cloud.orders()[0]["order_id"]


def test_worst_case_bound_is_documented_value():
    client = OrdersClient("http://127.0.0.1:9/api", "VM-1", b"k", timeout=2.0, retries=3,
                          backoff=0.2)
    assert client.worst_case_seconds == pytest.approx(4 * 2 * 2.0 + 0.2 * 7)
    client.close()


# --- the response decides where the money goes: BadOrder ----------------------------------------

def test_bad_response_sig_is_bad_order(cloud, client_for):
    cloud.set_api_mode("bad_sig")
    with pytest.raises(BadOrder, match="sig does not verify"):
        order(client_for(cloud))


def test_correctly_signed_wrong_amount_is_bad_order(cloud, client_for):
    cloud.set_api_mode("wrong_amount")  # sig is valid for 351: only the amount check stops it
    with pytest.raises(BadOrder, match="asked 350 CNY, response says 351 CNY"):
        order(client_for(cloud))


def _forging_client(mutate) -> OrdersClient:
    """A client whose server returns a correctly signed order, then `mutate`s the JSON."""
    def handler(request: httpx.Request) -> httpx.Response:
        req = json.loads(request.content)
        body = {"order_id": "o-1", "qr_url": "https://pay.example.test/q/o-1",
                "amount": req["amount"], "currency": req["currency"], "expires_at": 1764050520}
        body["sig"] = signing.order_sig(TEST_KEY, **body)
        out = mutate(body)
        return httpx.Response(201, content=out if isinstance(out, bytes) else json.dumps(out))

    return OrdersClient("https://pay.example.test/api", "VM-0001", TEST_KEY, retries=0,
                        transport=httpx.MockTransport(handler))


def test_forging_client_is_accepted_unmutated():
    # guards the tests below: their only difference from this one is the mutation
    got = order(_forging_client(lambda b: b))
    assert got == Order("o-1", "https://pay.example.test/q/o-1", 350, "CNY", 1764050520,
                        "s-1", 3, False)


@pytest.mark.parametrize("mutate, match", [
    (lambda b: {**b, "qr_url": "https://evil.example/q/o-1"}, "sig does not verify"),
    (lambda b: {**b, "currency": "USD", "sig": signing.order_sig(
        TEST_KEY, b["order_id"], b["qr_url"], b["amount"], "USD", b["expires_at"])},
     "response says 350 USD"),
    (lambda b: {k: v for k, v in b.items() if k != "expires_at"}, "lacks 'expires_at'"),
    (lambda b: {**b, "expires_at": str(b["expires_at"])}, "'expires_at' must be int"),
    (lambda b: {**b, "amount": 350.0}, "'amount' must be int"),
    (lambda b: {**b, "order_id": "../etc"}, "not a valid id"),
    (lambda b: b"<html>proxy login</html>", "not JSON"),
    (lambda b: [b], "must be a JSON object"),
])
def test_untrustworthy_responses_are_bad_order(mutate, match):
    with pytest.raises(BadOrder, match=match):
        order(_forging_client(mutate))


def test_oversized_response_is_not_read_to_the_end():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, content=b"x" * (orders.MAX_RESPONSE + 1))

    client = OrdersClient("https://pay.example.test/api", "VM-0001", TEST_KEY, retries=1,
                          sleep=Sleeps(), transport=httpx.MockTransport(handler))
    with pytest.raises(Unreachable, match="larger than"):
        order(client)


def test_gzip_response_is_decoded_before_checking():
    import gzip

    def handler(request: httpx.Request) -> httpx.Response:
        req = json.loads(request.content)
        body = {"order_id": "o-1", "qr_url": "https://pay.example.test/q/o-1",
                "amount": req["amount"], "currency": req["currency"], "expires_at": 1764050520}
        body["sig"] = signing.order_sig(TEST_KEY, **body)
        return httpx.Response(201, headers={"Content-Encoding": "gzip"},
                              content=gzip.compress(json.dumps(body).encode()))

    client = OrdersClient("https://pay.example.test/api", "VM-0001", TEST_KEY, retries=0,
                          transport=httpx.MockTransport(handler))
    assert order(client).order_id == "o-1"


# --- cancel and get -------------------------------------------------------------------------------

def test_cancel_pending_then_cancel_after_pay(cloud, client_for):
    client = client_for(cloud)
    a, b = order(client, "s-a"), order(client, "s-b")
    assert client.cancel_order(a.order_id) == "cancelled"
    assert client.get_order(a.order_id) == ("cancelled", None)
    paid = cloud.pay(b.order_id)
    assert client.cancel_order(b.order_id) == "paid"  # 409: the customer paid first
    state, payment = client.get_order(b.order_id)
    assert state == "paid" and payment == paid
    assert signing.verify_payload(TEST_KEY, payment)


def test_expired_order_reads_expired_and_cancels(make_cloud, mosquitto, client_for):
    skew = [0.0]
    cloud = make_cloud(broker=mosquitto, order_ttl=60, clock=lambda: time.time() + skew[0])
    client = client_for(cloud)
    got = order(client)
    skew[0] = 61  # within the 300 s window, past the order's expiry
    assert client.get_order(got.order_id) == ("expired", None)
    assert client.cancel_order(got.order_id) == "cancelled"


def test_unknown_order_is_refused_404_without_retry(cloud, client_for):
    client = client_for(cloud)
    with pytest.raises(Refused) as info:
        client.get_order("o-nope")
    assert info.value.status == 404 and client._sleep == []


# --- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    ((0, "p", 350, "CNY", "s-1"), "slot"),
    ((3, "p", True, "CNY", "s-1"), "amount"),
    ((3, "p", 3.5, "CNY", "s-1"), "amount"),
    ((3, "p", 350, "cny", "s-1"), "currency"),
    ((3, "p", 350, "CNY", "s 1"), "session_id"),
    ((3, "", 350, "CNY", "s-1"), "product_id"),
])
def test_bad_arguments_name_the_field(args, match):
    client = OrdersClient("http://127.0.0.1:9/api", "VM-1", b"k")
    with pytest.raises(ValueError, match=match):
        client.create_order(*args)
    with pytest.raises(ValueError, match="order_id"):
        client.get_order("../../etc/passwd")
    client.close()


@pytest.mark.parametrize("url", ["ftp://x/api", "127.0.0.1:80", "http://x/api?a=1",
                                 "http://[::1/api", None])
def test_bad_base_url(url):
    with pytest.raises(ValueError, match="base_url"):
        OrdersClient(url, "VM-1", b"k")


# --- offline orders (§4) --------------------------------------------------------------------------

def test_offline_order_is_deterministic_and_signed():
    args = ("VM-0001", TEST_KEY, "https://pay.example.test", 3, 350, "CNY", "s-7f3a",
            1764050400, 120)
    got = offline_order(*args)
    assert got == offline_order(*args)  # a retry mints the same order, not a second one
    assert (got.order_id, got.expires_at, got.offline) == ("off-s-7f3a", 1764050520, True)
    assert got.qr_url == signing.offline_qr_url(
        "https://pay.example.test", TEST_KEY, "VM-0001", "off-s-7f3a", 350, "CNY", 3, 1764050520)
    assert signing.verify_offline_qr_url(TEST_KEY, got.qr_url)


def test_offline_order_id_stays_a_valid_id_for_long_sessions():
    long_id = "s" * 64
    oid = orders.offline_order_id(long_id)
    assert orders.ID_RE.fullmatch(oid) and oid == orders.offline_order_id(long_id)
    assert oid != orders.offline_order_id("s" * 63 + "t")
