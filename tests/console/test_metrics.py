"""``GET /metrics``: Prometheus text computed from the shared store (audit-derived
counters, gauges), incremental, label values bounded, optional bearer token."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_helpers import Platform, make_kmc, platform


@pytest.fixture
def p(database_url: str, tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data")
    try:
        yield next(gen)
    finally:
        gen.close()
        kmc.db.dispose()


def scrape(p: Platform, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = p.c.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def settled(
    p: Platform, timeout: float = 15.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape taken once the background CRL publisher has caught up: a key-compromise
    revocation is published at once, and that publication appends an audit record of its
    own, possibly between a scrape's counting pass and its gauges (two reads)."""
    deadline = time.monotonic() + timeout
    while True:
        out = scrape(p)
        pending = out[("mstcrypt_crl_pending_revocations", (("ca", "issuing"),))]
        head = out[("mstcrypt_audit_head_seq", ())]
        if pending == 0 and head == out[("mstcrypt_audit_scanned_seq", ())]:
            return out
        assert time.monotonic() < deadline, (pending, head, out[("mstcrypt_audit_scanned_seq", ())])
        time.sleep(0.05)


def test_metrics_follow_the_platform(p: Platform) -> None:
    before = scrape(p)
    assert before[("mstcrypt_enrollments_total", ())] == 0
    assert ("mstcrypt_crl_age_seconds", (("ca", "issuing"),)) in before
    assert before[("mstcrypt_crl_next_update_seconds", (("ca", "issuing"),))] > 0
    t = p.terminal("alice")  # one enrollment, one login
    p.terminal("bob")
    # a wrong signature: a refused login, counted by reason
    key = t.key
    t.key = type(key).generate()
    r = p.login(t.key, t.sign_cert)
    assert r.status_code == 403
    p.kmc.revoke_certificate(f"{t.sign_cert.serial:x}", reason="key_compromise", actor="t")
    after = settled(p)
    assert after[("mstcrypt_enrollments_total", ())] == 2
    assert after[("mstcrypt_logins_total", ())] == 2
    assert after[("mstcrypt_revocations_total", ())] == 1
    failures = {k[1]: v for k, v in after.items() if k[0] == "mstcrypt_login_failures_total"}
    assert sum(failures.values()) == 1, failures
    assert after[("mstcrypt_certificates", (("status", "revoked"),))] >= 1
    # audit appends in this process: a histogram that counted the records just written
    appended = after[("mstcrypt_audit_append_seconds_count", ())]
    assert appended - before[("mstcrypt_audit_append_seconds_count", ())] >= 5
    assert after[("mstcrypt_audit_append_seconds_bucket", (("le", "+Inf"),))] == appended
    assert after[("mstcrypt_audit_append_seconds_sum", ())] > 0
    assert after[("mstcrypt_audit_append_seconds_bucket", (("le", "2.5"),))] <= appended
    # incremental: a scrape with nothing new changes no counter
    again = scrape(p)
    assert again[("mstcrypt_enrollments_total", ())] == 2
    assert again[("mstcrypt_audit_events_total", (("action", "enroll"),))] == 2
    # no owner, subject or serial in any label
    text = p.c.get("/metrics").text
    for secretish in ("alice", "bob", f"{t.sign_cert.serial:x}"):
        assert secretish not in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_token(p: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSTCRYPT_METRICS_TOKEN", "scrape-secret-1")
    assert p.c.get("/metrics").status_code == 401
    assert p.c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert scrape(p, Authorization="Bearer scrape-secret-1")
