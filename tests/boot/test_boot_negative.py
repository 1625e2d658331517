"""Trusted boot on hostile input: every attack of issue 17 stops the chain at the right
stage with the right code, and the device's rollback indexes do not move."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from bootkit import BLOCKS, Chain, make_chain
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mstcrypt.apps import boot
from mstcrypt.apps.boot.format import MAGIC
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecodeError, PolicyError, VerificationError


@pytest.fixture(name="chain")
def _chain(tmp_path: Path) -> Chain:
    return make_chain(tmp_path)


def fails(chain: Chain, stage: str, code: str, **kw: object) -> boot.BootError:
    before = list(chain.state.rollback)
    with pytest.raises(boot.BootError) as ei:
        chain.verify(**kw)
    assert (ei.value.stage, ei.value.code) == (stage, code), str(ei.value)
    assert chain.state.rollback == before
    return ei.value


def flip(p: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 1 << bit
    p.write_bytes(bytes(data))


# --- images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "stage"), [("bootloader", "bootloader"), ("vmlinuz", "kernel"), ("initrd", "kernel")]
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_bit_flip_in_stage_image(chain: Chain, image: str, stage: str, where: str) -> None:
    p = chain.images[image]
    size = p.stat().st_size
    flip(p, {"first": 0, "middle": size // 2, "last": size - 1}[where], bit=7)
    e = fails(chain, stage, "image-digest")
    assert isinstance(e, VerificationError) and image in str(e)


@pytest.mark.parametrize("image", ["bootloader", "vmlinuz", "initrd", "system"])
@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_truncated_or_extended_image(chain: Chain, image: str, change: str) -> None:
    p = chain.images[image]
    data = p.read_bytes()
    p.write_bytes(data[:-1] if change == "truncate" else data + b"\0")
    stage = {"bootloader": "bootloader", "system": "system"}.get(image, "kernel")
    fails(chain, stage, "image-size")


def test_truncated_tree(chain: Chain) -> None:
    t = chain.trees["system"]
    t.write_bytes(t.read_bytes()[:-4096])
    fails(chain, "system", "tree-size")


def test_tampered_system_block_caught_when_read(chain: Chain) -> None:
    flip(chain.images["system"], 200 * 4096 + 17)
    with chain.verify() as r:  # lazy: the chain itself verifies
        tree = r.trees["system"]
        assert tree.read_block(199) and tree.read_block(201)
        with pytest.raises(boot.HashTreeError) as ei:
            tree.read_block(200)
        assert (ei.value.level, ei.value.block, ei.value.stage) == (-1, 200, "system")
        with pytest.raises(boot.HashTreeError):
            tree.read(200 * 4096 - 10, 20)
    e = fails(chain, "system", "hashtree", full_hashtree=True)
    assert isinstance(e, boot.HashTreeError) and e.block == 200 and e.level == -1


@pytest.mark.parametrize(("level", "index"), [(1, 0), (0, 0), (0, 1), (0, 2)])
def test_bit_flip_in_each_tree_level(chain: Chain, level: int, index: int) -> None:
    lay = boot.tree_layout(4096 * BLOCKS, 4096)
    assert lay.level_blocks == (3, 1)
    flip(chain.trees["system"], lay.level_offsets[level] + index * 4096 + 100, bit=3)
    with chain.verify() as r:
        block = index * 128 + 3 if level == 0 else 3
        with pytest.raises(boot.HashTreeError) as ei:
            r.trees["system"].read_block(block)
        assert ei.value.level == level, str(ei.value)
        if level == 0:  # blocks under the other level-0 hash blocks still read
            r.trees["system"].read_block(((index + 1) % 3) * 128)
    e = fails(chain, "system", "hashtree", full_hashtree=True)
    assert isinstance(e, boot.HashTreeError) and e.level == level


def test_flip_in_tree_padding_is_caught(chain: Chain) -> None:
    lay = boot.tree_layout(4096 * BLOCKS, 4096)
    # last level-0 block holds 300 - 256 = 44 hashes, the rest is zero padding
    flip(chain.trees["system"], lay.level_offsets[0] + 2 * 4096 + 4000)
    with chain.verify() as r, pytest.raises(boot.HashTreeError):
        r.trees["system"].read_block(BLOCKS - 1)
    fails(chain, "system", "hashtree", full_hashtree=True)


# --- manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["bootloader", "kernel", "system"])
def test_bit_flip_anywhere_in_manifest(chain: Chain, stage: str) -> None:
    raw = chain.manifests[stage]
    codes = set()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01 << (i % 8)
        chain.manifests[stage] = bytes(bad)
        with pytest.raises(boot.BootError) as ei:
            chain.verify()
        assert ei.value.stage == stage
        codes.add(ei.value.code)
    chain.manifests[stage] = raw
    assert codes <= {"malformed-manifest", "untrusted-key", "bad-signature"}
    assert chain.state.rollback == [0] * 32


def test_truncated_manifest_every_length(chain: Chain) -> None:
    raw = chain.manifests["kernel"]
    for n in range(len(raw)):
        with pytest.raises(boot.BootFormatError) as ei:
            boot.Manifest.parse(raw[:n])
        assert ei.value.code == "malformed-manifest"
    with pytest.raises(boot.BootFormatError, match="trailing"):
        boot.Manifest.parse(raw + b"\0")


def test_manifest_signed_by_wrong_stage_key(chain: Chain) -> None:
    chain.resign("kernel", key=chain.rom)  # the ROM key may sign only the bootloader
    fails(chain, "kernel", "untrusted-key")


def test_bootloader_signed_by_unfused_key(chain: Chain) -> None:
    chain.resign("bootloader", key=SM2PrivateKey.generate())
    fails(chain, "bootloader", "untrusted-key")


def test_signature_by_other_key_over_claimed_key(chain: Chain) -> None:
    """signer_key says 'kernel key' but another key signed: the signature fails."""
    m = boot.Manifest.parse(chain.manifests["kernel"])
    sig = chain.next_key.sign(m.tbs)
    chain.manifests["kernel"] = m.tbs + struct.pack(">H", len(sig)) + sig
    fails(chain, "kernel", "bad-signature")


def test_swapped_next_stage_key(chain: Chain) -> None:
    attacker = SM2PrivateKey.generate()
    chain.resign("system", key=attacker)  # attacker signs a system image of their own
    fails(chain, "system", "untrusted-key")
    # and an attacker cannot name their key in the kernel manifest without the kernel key
    m = boot.Manifest.parse(chain.manifests["kernel"])
    descs = [
        boot.ChainDescriptor("system", 2, attacker.public_key())
        if isinstance(d, boot.ChainDescriptor)
        else d
        for d in m.descriptors
    ]
    chain.resign("kernel", key=attacker, descriptors=descs)
    fails(chain, "kernel", "untrusted-key")


def test_rollback_refused_and_nothing_committed(tmp_path: Path) -> None:
    ch = make_chain(tmp_path, versions=(3, 5, 2))
    with ch.verify() as r:
        ch.state.commit(r)
    assert ch.state.rollback[:3] == [3, 5, 2]
    ch.resign("kernel", rollback_index=4)  # an older, validly signed kernel
    e = fails(ch, "kernel", "rollback")
    assert isinstance(e, boot.RollbackError) and isinstance(e, PolicyError)
    # a newer bootloader with a failing later stage moves no index
    ch.resign("kernel", rollback_index=5)
    ch.resign("bootloader", rollback_index=9)
    flip(ch.images["initrd"], 0)
    fails(ch, "kernel", "image-digest")
    assert ch.state.rollback[:3] == [3, 5, 2]


def test_chain_descriptor_slot_differs(chain: Chain) -> None:
    chain.resign("system", rollback_location=5)
    fails(chain, "system", "stage-mismatch")


def test_slot_used_twice(chain: Chain) -> None:
    m = boot.Manifest.parse(chain.manifests["kernel"])
    descs = [
        boot.ChainDescriptor("system", 0, chain.next_key.public_key())
        if isinstance(d, boot.ChainDescriptor)
        else d
        for d in m.descriptors
    ]
    chain.resign("kernel", descriptors=descs)
    chain.resign("system", rollback_location=0)
    fails(chain, "system", "rollback")


def test_stage_name_mismatch(chain: Chain) -> None:
    chain.resign("system", stage="apps")
    fails(chain, "system", "stage-mismatch")


def test_image_reused_across_stages(chain: Chain) -> None:
    m = boot.Manifest.parse(chain.manifests["system"])
    dup = boot.HashDescriptor.of("vmlinuz", chain.images["vmlinuz"].read_bytes())
    chain.resign("system", descriptors=[*m.descriptors, dup])
    fails(chain, "system", "duplicate-image")


@pytest.mark.parametrize("target", ["kernel", "bootloader", "system"])
def test_chain_cycle(chain: Chain, target: str) -> None:
    m = boot.Manifest.parse(chain.manifests["system"])
    key = {"kernel": chain.kernel_key, "bootloader": chain.rom, "system": chain.next_key}[target]
    desc = boot.ChainDescriptor(target, 3, key.public_key())
    chain.resign("system", descriptors=[*m.descriptors, desc])
    fails(chain, "system", "chain-cycle")


def test_chain_too_deep(tmp_path: Path) -> None:
    keys = [SM2PrivateKey.generate() for _ in range(10)]
    manifests = {}
    images = {}
    for i in range(10):
        img = f"img{i}".encode()
        images[f"img{i}"] = img
        descs: list[boot.Descriptor] = [boot.HashDescriptor.of(f"img{i}", img)]
        if i < 9:
            descs.append(boot.ChainDescriptor(f"s{i + 1}", i + 1, keys[i + 1].public_key()))
        manifests[f"s{i}"] = boot.Manifest.build(
            f"s{i}", descs, rollback_index=0, rollback_location=i, key=keys[i]
        ).raw
    state = boot.DeviceState.new(keys[0].public_key())
    with pytest.raises(boot.BootError) as ei:
        boot.verify_chain(state, manifests, images, first="s0")
    assert (ei.value.stage, ei.value.code) == ("s7", "chain-too-deep")


def test_missing_manifest_and_images(chain: Chain) -> None:
    del chain.manifests["system"]
    fails(chain, "system", "missing-manifest")
    chain2 = chain
    del chain2.images["initrd"]
    with pytest.raises(boot.BootError) as ei:
        chain2.verify()
    assert (ei.value.stage, ei.value.code) == ("kernel", "missing-image")


# --- hostile manifests, written by hand and validly signed --------------------------


def _hostile(key: SM2PrivateKey, body: bytes, *, header: bytes | None = None) -> bytes:
    pub = key.public_key().to_bytes()
    hdr = header or (MAGIC + struct.pack(">BBHQ", 1, 0, 0, 1) + pub + b"\x0abootloader")
    tbs = hdr + body
    sig = key.sign(tbs)
    return tbs + struct.pack(">H", len(sig)) + sig


def _hash_body(name: bytes = b"bootloader", size: int = 3, salt: bytes = b"") -> bytes:
    return (
        bytes([len(name)]) + name + struct.pack(">Q", size) + bytes([len(salt)]) + salt + bytes(32)
    )


def _desc(tag: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">HI", tag, len(body) if length is None else length) + body


HOSTILE = {
    "huge descriptor length": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(), 0xFFFFFFFF),
    "length past end": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(), 4000),
    "descriptor count 65535": lambda: struct.pack(">H", 0xFFFF) + _desc(1, _hash_body()),
    "descriptor count 0": lambda: struct.pack(">H", 0),
    "count above descriptors": lambda: struct.pack(">H", 2) + _desc(1, _hash_body()),
    "unknown tag": lambda: struct.pack(">H", 1) + _desc(9, _hash_body()),
    "name length 255": lambda: struct.pack(">H", 1) + _desc(1, b"\xff" + b"a" * 255 + bytes(41)),
    "empty name": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(name=b"")),
    "name with slash": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(name=b"../etc")),
    "salt too long": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(salt=b"s" * 65)),
    "image size 2^63": lambda: struct.pack(">H", 1) + _desc(1, _hash_body(size=1 << 63)),
    "body with slack": lambda: struct.pack(">H", 1) + _desc(1, _hash_body() + b"\0"),
    "duplicate image": lambda: struct.pack(">H", 2) + _desc(1, _hash_body()) * 2,
    "tree size wrong": lambda: (
        struct.pack(">H", 1)
        + _desc(
            2,
            b"\x03sys" + struct.pack(">QB", 8192, 12) + b"\0" + struct.pack(">Q", 4097) + bytes(32),
        )
    ),
    "tree block 2^40": lambda: (
        struct.pack(">H", 1)
        + _desc(
            2,
            b"\x03sys" + struct.pack(">QB", 8192, 40) + b"\0" + struct.pack(">Q", 4096) + bytes(32),
        )
    ),
    "tree image not multiple": lambda: (
        struct.pack(">H", 1)
        + _desc(
            2,
            b"\x03sys" + struct.pack(">QB", 8191, 12) + b"\0" + struct.pack(">Q", 4096) + bytes(32),
        )
    ),
    "chain key off curve": lambda: (
        struct.pack(">H", 1)
        + _desc(3, b"\x06kernel" + struct.pack(">H", 1) + b"\x04" + bytes(63) + b"\x07")
    ),
    "chain slot 99": lambda: (
        struct.pack(">H", 1)
        + _desc(
            3,
            b"\x06kernel"
            + struct.pack(">H", 99)
            + SM2PrivateKey.generate().public_key().to_bytes(),
        )
    ),
    "two chain descriptors": lambda: (
        struct.pack(">H", 2)
        + _desc(
            3,
            b"\x06kernel" + struct.pack(">H", 1) + SM2PrivateKey.generate().public_key().to_bytes(),
        )
        * 2
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest(chain: Chain, case: str) -> None:
    chain.manifests["bootloader"] = _hostile(chain.rom, HOSTILE[case]())
    e = fails(chain, "bootloader", "malformed-manifest")
    assert isinstance(e, DecodeError)


@pytest.mark.parametrize(
    "header",
    [
        b"\x88MSTBOOT" + bytes([1, 0, 0, 0]) + bytes(8),  # magic
        MAGIC + bytes([2, 0, 0, 0]) + bytes(8),  # version
        MAGIC + bytes([1, 0x80, 0, 0]) + bytes(8),  # flags
        MAGIC + bytes([1, 0, 0, 32]) + bytes(8),  # rollback slot
    ],
)
def test_hostile_header(chain: Chain, header: bytes) -> None:
    full = header + chain.rom.public_key().to_bytes() + b"\x0abootloader"
    chain.manifests["bootloader"] = _hostile(
        chain.rom, struct.pack(">H", 1) + _desc(1, _hash_body()), header=full
    )
    fails(chain, "bootloader", "malformed-manifest")


def test_oversized_manifest(chain: Chain) -> None:
    body = struct.pack(">H", 17) + b"".join(
        _desc(1, _hash_body(name=f"i{i}".encode(), salt=b"s" * 64)) for i in range(17)
    )
    chain.manifests["bootloader"] = _hostile(chain.rom, body) + bytes(65536)
    fails(chain, "bootloader", "malformed-manifest")


def test_signer_key_off_curve(chain: Chain) -> None:
    raw = bytearray(chain.manifests["bootloader"])
    raw[20 + 64] ^= 1  # last byte of y
    chain.manifests["bootloader"] = bytes(raw)
    fails(chain, "bootloader", "malformed-manifest")


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b'{"rom_key_hash": "00", "rollback": []}',
        b'{"rom_key_hash": "' + b"00" * 32 + b'", "rollback": [-1]}',
    ],
)
def test_hostile_device_state(text: bytes) -> None:
    with pytest.raises(DecodeError):
        boot.DeviceState.from_json(text)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_manifests_only_raise_boot_errors(chain: Chain, data: st.DataObject) -> None:
    """Random splices, deletions and insertions: parse either succeeds (then only the
    signature can fail) or raises BootFormatError; nothing else escapes."""
    original = chain.manifests[data.draw(st.sampled_from(["bootloader", "kernel", "system"]))]
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        if op == "insert":
            raw[pos:pos] = chunk
        elif op == "delete":
            del raw[pos : pos + len(chunk)]
        else:
            raw[pos : pos + len(chunk)] = chunk
    assume(bytes(raw) != original)
    try:
        m = boot.Manifest.parse(bytes(raw))
    except boot.BootFormatError as exc:
        assert exc.code == "malformed-manifest"
        return
    with pytest.raises(VerificationError):
        m.signer_key.verify(m.signature, m.tbs)  # any change the parser accepts breaks it


def test_rotated_kernel_key_old_chain_refused(chain: Chain) -> None:
    """docs §9: a compromised kernel key is retired by a newer bootloader manifest naming
    the new key; after commit, the old bootloader (naming the old key) is a rollback."""
    old_manifests = dict(chain.manifests)
    with chain.verify() as r:
        chain.state.commit(r)
    new_key = SM2PrivateKey.generate()
    m = boot.Manifest.parse(chain.manifests["bootloader"])
    descs = [
        boot.ChainDescriptor("kernel", 1, new_key.public_key())
        if isinstance(d, boot.ChainDescriptor)
        else d
        for d in m.descriptors
    ]
    chain.resign("bootloader", descriptors=descs, rollback_index=2)
    chain.resign("kernel", key=new_key)
    with chain.verify() as r:
        chain.state.commit(r)
    chain.manifests = old_manifests  # the attacker holds the old kernel key
    fails(chain, "bootloader", "rollback")
