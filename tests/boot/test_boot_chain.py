"""Trusted boot: manifests, the hash tree and the chain verifier on good input."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from bootkit import BLOCKS, Chain, make_chain

from mstcrypt.apps import boot
from mstcrypt.apps.boot.hashtree import tree_layout
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, VerificationError


@pytest.fixture(name="chain")
def _chain(tmp_path: Path) -> Chain:
    return make_chain(tmp_path)


def naive_tree(data: bytes, bs: int, salt: bytes) -> tuple[bytes, bytes]:
    """An independent, in-memory dm-verity format-1 tree: (root, tree bytes)."""
    level = [sm3(salt + data[i : i + bs]) for i in range(0, len(data), bs)]
    if len(level) == 1:
        return level[0], b""
    stored: list[bytes] = []
    while True:
        packed = b"".join(level)
        blocks = [packed[i : i + bs].ljust(bs, b"\0") for i in range(0, len(packed), bs)]
        stored.append(b"".join(blocks))
        level = [sm3(salt + b) for b in blocks]
        if len(blocks) == 1:
            return level[0], b"".join(reversed(stored))


def test_manifest_round_trip() -> None:
    k = SM2PrivateKey.generate()
    nk = SM2PrivateKey.generate()
    descs = [
        boot.HashDescriptor.of("kernel", b"k" * 1000, b"salt"),
        boot.HashTreeDescriptor("system", 8192, 12, b"", 4096, bytes(32)),
        boot.ChainDescriptor("apps", 7, nk.public_key()),
    ]
    m = boot.Manifest.build("kernel", descs, rollback_index=2**64 - 1, rollback_location=31, key=k)
    p = boot.Manifest.parse(m.raw)
    assert p == m
    assert p.descriptors == tuple(descs)
    assert p.stage == "kernel" and p.rollback_index == 2**64 - 1 and p.rollback_location == 31
    assert p.chain == descs[2] and p.images == tuple(descs[:2])
    assert p.raw.startswith(boot.MAGIC) and p.signer_key == k.public_key()
    k.public_key().verify(p.signature, p.tbs)
    assert p.digest == sm3(m.raw)


def test_chain_verifies_and_commits_rollback(chain: Chain) -> None:
    chain.resign("kernel", rollback_index=4)
    before = list(chain.state.rollback)
    with chain.verify(full_hashtree=True) as r:
        assert r.stages == ["bootloader", "kernel", "system"]
        assert chain.state.rollback == before  # nothing stored before commit
        assert r.rollback[:3] == [1, 4, 1]
        digests = [sm3(chain.manifests[s]) for s in r.stages]
        assert [e.digest for e in r.log.events] == digests
        assert r.log.pcr == boot.replay(r.log.events) != bytes(32)
        chain.state.commit(r)
        tree = r.trees["system"]
        data = chain.images["system"].read_bytes()
        for i in (0, 1, 127, 128, 255, BLOCKS - 1):
            assert tree.read_block(i) == data[i * 4096 : (i + 1) * 4096]
        assert tree.read(4000, 10000) == data[4000:14000]
    assert chain.state.rollback[:3] == [1, 4, 1]
    state2 = boot.DeviceState.from_json(chain.state.to_json())
    assert state2 == chain.state


def test_commit_refuses_foreign_result(chain: Chain) -> None:
    with chain.verify() as r:
        other = boot.DeviceState.new(SM2PrivateKey.generate().public_key())
        with pytest.raises(VerificationError):
            other.commit(r)
        assert other.rollback == [0] * 32


@pytest.mark.parametrize(
    ("blocks", "bs"),
    [(1, 4096), (2, 4096), (128, 4096), (129, 4096), (1, 64), (2, 64), (3, 64), (9, 64), (37, 128)],
)
def test_hashtree_matches_independent_tree(blocks: int, bs: int) -> None:
    data = os.urandom(blocks * bs)
    salt = os.urandom(7)
    tree_out = io.BytesIO()
    info = boot.build(io.BytesIO(data), tree_out, block_size=bs, salt=salt)
    root, tree = naive_tree(data, bs, salt)
    assert info.root == root
    assert tree_out.getvalue() == tree
    assert info.layout.tree_size == len(tree) == tree_layout(len(data), bs).tree_size


@pytest.mark.parametrize("blocks", [1, 2, 5, 9, 31])
def test_hashtree_every_block_small_fanout(blocks: int) -> None:
    """Block size 64 (two hashes per block) gives deep trees from a few blocks."""
    bs = 64
    data = os.urandom(blocks * bs)
    tree = io.BytesIO()
    info = boot.build(io.BytesIO(data), tree, block_size=bs, salt=b"x")
    desc = boot.HashTreeDescriptor("s", len(data), 6, b"x", info.layout.tree_size, info.root)
    ht = boot.HashTree(desc, io.BytesIO(data), io.BytesIO(tree.getvalue()), cache=0)
    for i in range(blocks):
        assert ht.read_block(i) == data[i * bs : (i + 1) * bs]
    ht.verify_all()


@pytest.mark.skipif(
    shutil.which("veritysetup") is None, reason="veritysetup (cryptsetup-bin) not installed"
)
@pytest.mark.parametrize("blocks", [2, 300, 16385 // 64])
def test_hashtree_interop_veritysetup(tmp_path: Path, blocks: int) -> None:
    img = tmp_path / "img"
    img.write_bytes(os.urandom(blocks * 4096))
    salt = os.urandom(32)
    out = subprocess.run(
        [
            "veritysetup", "format", "--no-superblock", "--format=1", "--hash=sm3",
            "--data-block-size=4096", "--hash-block-size=4096", f"--salt={salt.hex()}",
            str(img), str(tmp_path / "v.tree"),
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    vroot = next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("Root hash"))
    with img.open("rb") as f, (tmp_path / "m.tree").open("wb") as t:
        info = boot.build(f, t, block_size=4096, salt=salt)
    assert info.root.hex() == vroot
    assert (tmp_path / "m.tree").read_bytes() == (tmp_path / "v.tree").read_bytes()


def test_hashtree_build_and_verify_constant_memory(tmp_path: Path) -> None:
    size = 48 << 20
    img = tmp_path / "big.img"
    with img.open("wb") as f:
        f.truncate(size)  # sparse: the tree of 12288 blocks is still computed in full
    tracemalloc.start()
    try:
        with img.open("rb") as f, (tmp_path / "big.tree").open("w+b") as t:
            info = boot.build(f, t, block_size=4096)
            desc = boot.HashTreeDescriptor("big", size, 12, b"", info.layout.tree_size, info.root)
            boot.HashTree(desc, f, t).verify_all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.layout.tree_size > 384 << 10  # the tree is larger than ...
    assert peak < 3 << 20  # ... a fraction of what holding image or tree would take


def test_verify_from_bytes_and_file_objects(chain: Chain) -> None:
    images = {k: v.read_bytes() for k, v in chain.images.items()}
    trees = {"system": chain.trees["system"].open("rb")}
    try:
        with boot.verify_chain(chain.state, chain.manifests, images, trees=trees) as r:
            assert r.trees["system"].read_block(5) == images["system"][5 * 4096 : 6 * 4096]
    finally:
        trees["system"].close()


def test_eventlog_json_round_trip(chain: Chain) -> None:
    with chain.verify() as r:
        log = boot.EventLog.from_json(r.log.to_json())
    assert log.events == r.log.events and log.pcr == r.log.pcr


def test_manifest_and_quote_signatures_verify_with_openssl(
    chain: Chain, tmp_path: Path, openssl: Callable[..., bytes]
) -> None:
    """The manifests are standard SM2 signatures (default ID) over tbs, and a hash
    descriptor without salt is the plain SM3 of the image: OpenSSL agrees."""
    from mstcrypt.apps.boot.attest import Quote
    from mstcrypt.formats.keys import dump_public_key

    for stage, key in (("bootloader", chain.rom), ("kernel", chain.kernel_key)):
        m = boot.Manifest.parse(chain.manifests[stage])
        (tmp_path / "tbs").write_bytes(m.tbs)
        (tmp_path / "sig").write_bytes(m.signature)
        (tmp_path / "pub.pem").write_bytes(dump_public_key(key.public_key()))
        out = openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                      "-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
                      "-in", str(tmp_path / "tbs"), "-sigfile", str(tmp_path / "sig"))  # fmt: skip
        assert b"Signature Verified Successfully" in out
    vmlinuz = boot.Manifest.parse(chain.manifests["kernel"]).images[0]
    assert isinstance(vmlinuz, boot.HashDescriptor) and vmlinuz.salt == b""
    dgst = openssl("dgst", "-sm3", "-r", str(chain.images["vmlinuz"])).split()[0].decode()
    assert dgst == vmlinuz.digest.hex()
    q = Quote.create(os.urandom(32), os.urandom(32), "0a", sign=chain.next_key.sign)
    (tmp_path / "tbs").write_bytes(q.tbs)
    (tmp_path / "sig").write_bytes(q.signature)
    (tmp_path / "pub.pem").write_bytes(dump_public_key(chain.next_key.public_key()))
    openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
            "-digest", "sm3", "-pkeyopt", "distid:1234567812345678", "-in", str(tmp_path / "tbs"),
            "-sigfile", str(tmp_path / "sig"))  # fmt: skip


def test_hashtree_build_from_short_reads_and_short_image() -> None:
    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(n if n and n > 0 else 1 << 30, 1000))

    data = os.urandom(4096 * 5)
    a, b = io.BytesIO(), io.BytesIO()
    ref = boot.build(io.BytesIO(data), a, block_size=4096)
    assert boot.build(Trickle(data), b, block_size=4096, image_size=len(data)).root == ref.root
    assert a.getvalue() == b.getvalue()
    with pytest.raises(boot.BootVerificationError) as ei:
        boot.build(io.BytesIO(data[:-1]), io.BytesIO(), block_size=4096, image_size=len(data))
    assert ei.value.code == "image-size"


def test_pcr_extend_and_replay() -> None:
    d1, d2 = os.urandom(32), os.urandom(32)
    assert boot.extend(bytes(32), d1) == sm3(bytes(32) + d1)
    events = [boot.Event("a", "manifest", d1), boot.Event("b", "manifest", d2)]
    assert boot.replay(events) == sm3(sm3(bytes(32) + d1) + d2)
    assert boot.replay(events[::-1]) != boot.replay(events)  # order matters
    with pytest.raises(DecodeError):
        boot.extend(bytes(32), d1[:31])
    for bad in (
        "{",
        "[{}]",
        '[{"stage": "a", "kind": "other", "digest": "00"}]',
        '[{"stage": "A B", "kind": "manifest", "digest": "' + "00" * 32 + '"}]',
        '[{"stage": "a", "kind": "manifest", "digest": "zz"}]',
        "[" + ",".join(["1"] * 65) + "]",
    ):
        with pytest.raises(DecodeError):
            boot.EventLog.from_json(bad)
