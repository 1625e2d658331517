"""App signing end to end: real APKs signed by apksigner, our developer and channel
layers added, apksigner still verifying, and the terminal's double verification and
install agent accepting the genuine package and refusing every attack of issue 16."""

from __future__ import annotations

import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from appsign_kit import apksign, apksigner_path, apksigner_verify, build_apk, channel_pki

from mstcrypt.apps import appsign
from mstcrypt.apps.appsign.format import CHANNEL_PAIR_ID, DEVELOPER_PAIR_ID
from mstcrypt.apps.appsign.package import (
    PADDING_PAIR_ID,
    V2_PAIR_ID,
    V3_PAIR_ID,
    read_layout,
    write_with_pairs,
)
from mstcrypt.errors import DecodeError, PolicyError, VerificationError

needs_apksigner = pytest.mark.skipif(
    apksigner_path() is None, reason="apksigner not installed (Debian package apksigner)"
)
pytestmark = needs_apksigner


@pytest.fixture(scope="module")
def store():
    return channel_pki("gov-store")


@pytest.fixture(scope="module")
def other_store():
    return channel_pki("rogue-store")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An apksigner-signed (v2+v3) APK, version 7, and version 6 of the same package (with
    a UTF-8 string pool in its manifest, as aapt2 writes)."""
    d = tmp_path_factory.mktemp("apk")
    out = {}
    for code in (6, 7):
        build_apk(d / f"u{code}.apk", "cn.example.app", code, payload=300_000, utf8=code == 6)
        out[code] = apksign(d / f"u{code}.apk", d / f"s{code}.apk", d)
        # apksigner read minSdkVersion 24 from our manifest: it refuses to sign with ECDSA
        # below minSdk 18 (the default, 1, when it cannot read the manifest)
        assert apksigner_verify(out[code]).returncode == 0
    return out


def publish(src: Path, dst_dir: Path, store, developer=None, name="pub.apk") -> Path:
    developer = developer or store.developer
    dev = dst_dir / f"dev-{name}"
    appsign.sign_developer(src, dev, signer=developer.signer(), certificates=[developer.cert])
    out = dst_dir / name
    appsign.countersign(
        dev,
        out,
        signer=store.signer.signer(),
        certificates=[store.signer.cert],
        channel_name=store.name,
        channel_ca=store.ca.certificate,
        crls=[store.crl()],
    )
    return out


@pytest.fixture(scope="module")
def published(base, store, tmp_path_factory):
    return publish(base[7], tmp_path_factory.mktemp("pub"), store)


def policy(store, tmp_path, **extra):
    return appsign.Policy.from_file(store.policy(tmp_path, **extra))


def test_double_signature_keeps_apksigner_and_verifies(published, store, tmp_path):
    res = apksigner_verify(published)
    assert res.returncode == 0, res.stderr
    assert "Verified using v2 scheme (APK Signature Scheme v2): true" in res.stdout
    assert "Verified using v3 scheme (APK Signature Scheme v3): true" in res.stdout
    verdict = appsign.verify_package(published, policy(store, tmp_path), crls=[store.crl()])
    assert (verdict.package, verdict.version_code, verdict.channel) == (
        "cn.example.app",
        7,
        "gov-store",
    )
    assert verdict.developer == store.developer.cert
    info = appsign.inspect(published)
    assert info.developer is not None and info.channel is not None
    assert info.channel.signed.developer_layer_sm3 != bytes(32)
    # the layers did not change what v2 and we digest
    assert info.content_digest == info.developer.signed.content_digest


def test_developer_only_apksigner_ok_but_terminal_refuses(base, store, tmp_path):
    dev = tmp_path / "dev.apk"
    appsign.sign_developer(
        base[7], dev, signer=store.developer.signer(), certificates=[store.developer.cert]
    )
    assert apksigner_verify(dev).returncode == 0
    rev = appsign.review(dev, channel_ca=store.ca.certificate, crls=[store.crl()])
    assert rev.summary()["package"] == "cn.example.app"
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(dev, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "channel-missing"


def test_plain_zip_is_a_clear_error(tmp_path):
    z = build_apk(tmp_path / "plain.apk")
    with pytest.raises(appsign.NotSignedError) as e:
        appsign.inspect(z)
    assert e.value.code == "no-signing-block"
    assert "apksigner" in str(e.value)
    (tmp_path / "junk").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(appsign.PackageFormatError) as e:
        appsign.inspect(tmp_path / "junk")
    assert e.value.code == "not-a-zip"


def _flip(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def _regions(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        lay = read_layout(f)
    dev = lay.pair(DEVELOPER_PAIR_ID)
    return {
        "entry": 2000,  # inside the first local entries (the manifest, the dex)
        "stored-asset": lay.block_offset - 5000,
        "central-directory": lay.cd_offset + 16,  # CRC-32 of the first entry
        "eocd-comment-length": lay.eocd_offset + 20,
        "developer-layer": dev.offset + dev.length - 10,  # in the certificate
    }


@pytest.mark.parametrize(
    ("region", "codes"),
    [
        ("entry", {"digest-mismatch"}),
        ("stored-asset", {"digest-mismatch"}),
        ("central-directory", {"digest-mismatch"}),
        ("eocd-comment-length", {"not-a-zip"}),
        ("developer-layer", {"channel-covers-other-developer"}),
    ],
)
def test_byte_changed_is_refused(published, store, tmp_path, region, codes):
    bad = _flip(published, tmp_path / "bad.apk", _regions(published)[region])
    with pytest.raises((appsign.AppSignError,)) as e:
        appsign.verify_package(bad, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code in codes, (region, e.value.code, str(e.value))


def test_signing_block_byte_changed_in_channel_signature(published, store, tmp_path):
    with open(published, "rb") as f:
        lay = read_layout(f)
    ch = lay.pair(CHANNEL_PAIR_ID)
    # the channel signed data starts after its 4-byte length: change the signing time
    bad = _flip(
        published, tmp_path / "bad.apk", ch.offset + 4 + 4 + 25 + 4 + 4 + 32 + 4 + 32 + 4 + 14 + 9
    )
    with pytest.raises(appsign.AppSignError) as e:
        appsign.verify_package(bad, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "channel-signature"


def _replace_pair(src: Path, dst: Path, put=None, remove=()) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        write_with_pairs(f, read_layout(f), g, put or {}, remove=remove)
    return dst


def test_developer_layer_removed(published, store, tmp_path):
    bad = _replace_pair(published, tmp_path / "bad.apk", remove=[DEVELOPER_PAIR_ID])
    assert apksigner_verify(bad).returncode == 0
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(bad, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "developer-missing"


def test_developer_layer_swapped_for_another_developer(base, published, store, tmp_path):
    mallory = store.developer_from_csr("Mallory Apps")
    alt = tmp_path / "mallory.apk"
    appsign.sign_developer(base[7], alt, signer=mallory.signer(), certificates=[mallory.cert])
    with open(alt, "rb") as f:
        lay = read_layout(f)
        p = lay.pair(DEVELOPER_PAIR_ID)
        f.seek(p.offset)
        mallory_value = f.read(p.length)
    bad = _replace_pair(published, tmp_path / "bad.apk", put={DEVELOPER_PAIR_ID: mallory_value})
    assert apksigner_verify(bad).returncode == 0
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(bad, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "channel-covers-other-developer"


def test_channel_not_designated(base, store, other_store, tmp_path):
    # a package published by another channel (its own CA and signer)
    rogue = publish(base[7], tmp_path, other_store, name="rogue.apk")
    appsign.verify_package(rogue, policy(other_store, tmp_path), crls=[other_store.crl()])
    with pytest.raises(appsign.AppPolicyError) as e:
        appsign.verify_package(rogue, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "channel-not-designated"


def test_developer_cannot_pose_as_channel(base, store, tmp_path):
    # the developer's own code-signing certificate chains to the same channel CA,
    # but it is not one of the channel's designated signing keys
    dev = tmp_path / "dev.apk"
    appsign.sign_developer(
        base[7], dev, signer=store.developer.signer(), certificates=[store.developer.cert]
    )
    out = tmp_path / "self.apk"
    appsign.countersign(
        dev,
        out,
        signer=store.developer.signer(),
        certificates=[store.developer.cert],
        channel_name=store.name,
        channel_ca=store.ca.certificate,
        crls=[store.crl()],
    )
    with pytest.raises(appsign.AppPolicyError) as e:
        appsign.verify_package(out, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "channel-not-designated"


def test_developer_of_another_channel_refused_at_review_and_terminal(
    base, store, other_store, tmp_path
):
    dev = tmp_path / "dev.apk"
    appsign.sign_developer(
        base[7],
        dev,
        signer=other_store.developer.signer(),
        certificates=[other_store.developer.cert],
    )
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.review(dev, channel_ca=store.ca.certificate, crls=[store.crl()])
    assert e.value.code == "developer-certificate" and "unknown_issuer" in str(e.value)


def test_revoked_developer_refused_after_crl_refresh(published, store, tmp_path):
    pol = policy(store, tmp_path)
    appsign.verify_package(published, pol, crls=[store.crl()])
    newer = store.crl(store.developer.cert, number=2)
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(published, pol, crls=[newer])
    assert e.value.code == "developer-certificate" and "revoked" in str(e.value)
    # and without any CRL the policy refuses (revocation check required)
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(published, pol)
    assert "crl_missing" in str(e.value)


def test_expired_developer_certificate(base, store, tmp_path):
    now = datetime.now(UTC)
    old = store.developer_from_csr(
        "Old Dev", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    dev = tmp_path / "dev.apk"
    appsign.sign_developer(base[7], dev, signer=old.signer(), certificates=[old.cert])
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.review(dev, channel_ca=store.ca.certificate, crls=[store.crl()])
    assert "expired" in str(e.value)


def test_minimum_version_and_developer_allowlist(published, store, tmp_path):
    with pytest.raises(appsign.AppPolicyError) as e:
        appsign.verify_package(
            published,
            policy(store, tmp_path, min_versions={"cn.example.app": 8}),
            crls=[store.crl()],
        )
    assert e.value.code == "downgrade"
    with pytest.raises(appsign.AppPolicyError) as e:
        appsign.verify_package(
            published,
            policy(store, tmp_path, developers=[store.signer.cert.public_key.fingerprint().hex()]),
            crls=[store.crl()],
        )
    assert e.value.code == "developer-not-allowed"
    ok = policy(
        store,
        tmp_path,
        developers=[appsign.key_fingerprint(store.developer.cert)],
        min_versions={"cn.example.app": 7},
    )
    assert appsign.verify_package(published, ok, crls=[store.crl()]).version_code == 7


def test_wrong_key_for_certificate_refused_before_writing(base, store, tmp_path):
    out = tmp_path / "never.apk"
    with pytest.raises(PolicyError):
        appsign.sign_developer(
            base[7], out, signer=store.signer.signer(), certificates=[store.developer.cert]
        )
    assert not out.exists()
    assert not any(p.name.startswith(".appsign-") for p in tmp_path.iterdir())


def test_resign_after_countersign_refused(published, store, tmp_path):
    with pytest.raises(PolicyError):
        appsign.sign_developer(
            published,
            tmp_path / "x.apk",
            signer=store.developer.signer(),
            certificates=[store.developer.cert],
        )


def test_install_agent(base, published, store, other_store, tmp_path):
    crl = store.crl()
    agent = appsign.InstallAgent(tmp_path / "mst", policy(store, tmp_path), [crl])
    inst = agent.install(published)
    assert (inst.package, inst.version_code) == ("cn.example.app", 7)
    assert agent.launch("cn.example.app").cached is True
    # tampered copy refused, nothing installed over the good one
    bad = _flip(published, tmp_path / "bad.apk", 3000)
    with pytest.raises(appsign.AppSignError):
        agent.install(bad)
    # another channel's package refused
    rogue = publish(base[7], tmp_path, other_store, name="rogue.apk")
    with pytest.raises(appsign.AppPolicyError):
        agent.install(rogue)
    # downgrade to version 6 refused
    v6 = publish(base[6], tmp_path, store, name="v6.apk")
    with pytest.raises(appsign.AppPolicyError) as e:
        agent.install(v6)
    assert e.value.code == "downgrade"
    assert agent.installed() == {"cn.example.app": 7}
    assert not [p for p in (tmp_path / "mst" / "apps").iterdir() if p.name.startswith(".")]
    # the installed file changed behind the agent's back: refused at launch
    installed = tmp_path / "mst" / "apps" / "cn.example.app.apk"
    keep = installed.read_bytes()
    _flip(installed, installed, 3000)
    with pytest.raises(appsign.AppVerificationError) as e:
        agent.launch("cn.example.app")
    assert e.value.code == "digest-mismatch"
    installed.write_bytes(keep)
    # a CRL refresh revoking the developer: the cache no longer answers, launch refused
    revoking = appsign.InstallAgent(
        tmp_path / "mst", policy(store, tmp_path), [store.crl(store.developer.cert, number=2)]
    )
    with pytest.raises(appsign.AppVerificationError) as e:
        revoking.launch("cn.example.app")
    assert "revoked" in str(e.value)
    # past the cached verdict's validity (here the CRL's nextUpdate) the launch verifies
    # in full again, and a stale CRL refuses until the agent gets a fresh one
    with pytest.raises(appsign.AppVerificationError) as e:
        agent.launch("cn.example.app", at=datetime.now(UTC) + timedelta(days=8))
    assert "crl_expired" in str(e.value)
    fresh = appsign.InstallAgent(tmp_path / "mst", policy(store, tmp_path), [store.crl(number=3)])
    assert fresh.launch("cn.example.app").cached is False
    assert fresh.launch("cn.example.app").cached is True
    with pytest.raises(appsign.AppPolicyError):
        agent.launch("cn.unknown.app")


def test_errors_are_typed(published, tmp_path):
    assert issubclass(appsign.PackageFormatError, DecodeError)
    assert issubclass(appsign.AppVerificationError, VerificationError)
    assert issubclass(appsign.AppPolicyError, PolicyError)
    shutil.copy(published, tmp_path / "x.apk")
    data = bytearray((tmp_path / "x.apk").read_bytes())
    struct.pack_into("<I", data, len(data) - 6, 0)  # EOCD cd offset -> 0
    (tmp_path / "x.apk").write_bytes(bytes(data))
    with pytest.raises(appsign.PackageFormatError) as e:
        appsign.inspect(tmp_path / "x.apk")
    assert e.value.code == "bad-eocd"


def test_android_signature_changed_or_stripped(published, store, tmp_path):
    """A byte changed in apksigner's v2 pair, or the v3 pair stripped: Android would
    refuse or downgrade the package, and so does the terminal."""
    with open(published, "rb") as f:
        v2 = read_layout(f).pair(V2_PAIR_ID)
    bad = _flip(published, tmp_path / "bad.apk", v2.offset + v2.length - 3)
    assert apksigner_verify(bad).returncode != 0
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(bad, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "apk-signature-mismatch"
    stripped = _replace_pair(published, tmp_path / "stripped.apk", remove=[V3_PAIR_ID])
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(stripped, policy(store, tmp_path), crls=[store.crl()])
    assert e.value.code == "apk-signature-mismatch"


def test_mutations_never_crash(published, store, tmp_path):
    """Random byte changes and truncations in the signing block, the central directory
    and the end record: each is refused with a typed error (or, for bytes nobody covers,
    such as verity padding, accepted), never an untyped exception."""
    import random

    from mstcrypt.errors import MstCryptError

    rng = random.Random(1606)
    data = published.read_bytes()
    with open(published, "rb") as f:
        lay = read_layout(f)
    pol = policy(store, tmp_path)
    crls = [store.crl()]
    target = tmp_path / "m.apk"
    padding = lay.pair(PADDING_PAIR_ID)
    outcomes: dict[str, int] = {}
    for i in range(150):
        buf = bytearray(data)
        if i % 10 == 9:
            pos = rng.randrange(lay.block_offset, len(buf))
            buf = buf[:pos]
        else:
            pos = rng.randrange(lay.block_offset, len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(buf))
        try:
            appsign.verify_package(target, pol, crls=crls)
        except MstCryptError as exc:
            code = getattr(exc, "code", type(exc).__name__)
            outcomes[code] = outcomes.get(code, 0) + 1
            continue
        # accepted: only a bit flipped inside the zero padding, which no signature covers
        assert i % 10 != 9 and padding.offset <= pos < padding.offset + padding.length, pos
        outcomes["accepted"] = outcomes.get("accepted", 0) + 1
    assert len(outcomes) >= 4, outcomes


def test_policy_with_two_channels_sharing_a_signer(published, store, other_store, tmp_path):
    """A policy listing another channel first with the same signing key: the package
    is accepted under the channel whose CA issued its developer certificate."""
    (tmp_path / "a.pem").write_bytes(other_store.ca.certificate.pem)
    (tmp_path / "b.pem").write_bytes(store.ca.certificate.pem)
    fp = appsign.key_fingerprint(store.signer.cert)
    pol = appsign.Policy.from_dict(
        {
            "channels": [
                {"name": "first", "ca_file": "a.pem", "signer_keys": [fp]},
                {"name": "second", "ca_file": "b.pem", "signer_keys": [fp]},
            ]
        },
        base=tmp_path,
    )
    assert appsign.verify_package(published, pol, crls=[store.crl()]).channel == "second"
    only_first = appsign.Policy(pol.channels[:1])
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(published, only_first, crls=[store.crl()])
    assert e.value.code == "developer-certificate"


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"channels": []},
        {"channels": [{"name": "x", "ca_file": "ca.pem"}]},
        {"channels": [{"name": "x", "ca_file": "missing.pem", "signer_keys": []}]},
        {"channels": [{"name": "x", "ca_file": "ca.pem", "signer_keys": ["zz"]}]},
        {"channels": [{"name": "x", "ca_file": "ca.pem", "signer_keys": []}], "extra": 1},
        {
            "channels": [{"name": "x", "ca_file": "ca.pem", "signer_keys": []}],
            "min_versions": {"a.b": -1},
        },
        {"channels": [{"name": "x", "ca_file": "ca.pem", "signer_keys": []}], "require_crl": "no"},
    ],
)
def test_bad_policies_refused(doc, store, tmp_path):
    (tmp_path / "ca.pem").write_bytes(store.ca.certificate.pem)
    with pytest.raises(PolicyError):
        appsign.Policy.from_dict(doc, base=tmp_path)


def test_agent_state_tampering_is_a_typed_error(published, store, tmp_path):
    from mstcrypt.errors import KeyStoreError

    agent = appsign.InstallAgent(tmp_path / "mst", policy(store, tmp_path), [store.crl()])
    agent.install(published)
    state = tmp_path / "mst" / "state.json"
    for bad in ("not json", '{"apps": []}', '{"apps": {"cn.example.app": {"version_code": "7"}}}'):
        state.write_text(bad)
        with pytest.raises(KeyStoreError):
            agent.launch("cn.example.app")
    state.unlink()
    with pytest.raises(appsign.AppPolicyError) as e:
        agent.launch("cn.example.app")
    assert e.value.code == "not-installed"
