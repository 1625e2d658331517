"""The encrypted-file test kit (tests/filekit): every valid file decrypts to the listed
plaintext and every malformed file is rejected with the exact error of the manifest,
by the streaming reader, the random-access reader and (for header errors) inspect."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.apps import files
from mstcrypt.apps.files.errors import FORMAT_CODES, PAYLOAD_CODES
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.module import KeyUsage, SoftToken

KIT = Path(__file__).parent / "filekit"
MANIFEST: dict[str, Any] = json.loads((KIT / "manifest.json").read_text(encoding="utf-8"))
CASES = MANIFEST["cases"]
HEADER_CODES = (
    FORMAT_CODES | {"no-matching-recipient", "stanza-decrypt-failed"} | {"header-mac-mismatch"}
)


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("filekit_generate", KIT / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> tuple[SoftToken, Any]:
    """A soft token holding the kit's reader key as an encryption key."""
    tok = SoftToken.init(tmp_path_factory.mktemp("kit") / "t.tok", "123456", "admin-code-1")
    tok.create_container("reader")
    key = SM2PrivateKey.from_bytes(bytes.fromhex(MANIFEST["reader"]["private_key"]))
    handle = tok.import_key_pair("reader", key, KeyUsage.ENCRYPT, allow_plaintext_import=True)
    assert handle.public_key.to_bytes().hex() == MANIFEST["reader"]["public_key"]
    return tok, handle


def test_corpus_size_and_coverage() -> None:
    bad = [c for c in CASES if c["expect"] == "error"]
    assert len(bad) >= 30
    codes = {c["code"] for c in bad}
    # every specified check except the unreachable counter overflow has a vector
    assert codes == HEADER_CODES | PAYLOAD_CODES - {"chunk-counter-overflow"}
    assert len({c["file"] for c in CASES}) == len(CASES)


def test_corpus_is_reproducible(tmp_path: Path) -> None:
    """The stored corpus is exactly what the deterministic generator writes."""
    _generator().generate(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == (KIT / "manifest.json").read_bytes()
    fresh = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    stored = sorted(p.name for p in (KIT / "corpus").iterdir())
    assert fresh == stored
    for name in fresh:
        assert (tmp_path / "corpus" / name).read_bytes() == (KIT / "corpus" / name).read_bytes()


def _check(case: dict[str, Any], exc: files.FileError) -> None:
    assert type(exc).__name__ == case["class"], (case["file"], exc)
    assert exc.code == case["code"]
    assert str(exc) == case["message"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"].split("/")[-1] for c in CASES])
def test_stream_decrypt(case: dict[str, Any], reader: tuple[SoftToken, Any]) -> None:
    tok, handle = reader
    data = (KIT / case["file"]).read_bytes()
    assert sm3(data).hex() == case["sm3"]
    out = io.BytesIO()
    if case["expect"] == "ok":
        n = files.decrypt(io.BytesIO(data), out, tok, handle)
        assert n == case["plaintext_size"]
        assert sm3(out.getvalue()).hex() == case["plaintext_sm3"]
        return
    with pytest.raises(files.FileError) as info:
        files.decrypt(io.BytesIO(data), out, tok, handle)
    _check(case, info.value)


@pytest.mark.parametrize("case", CASES, ids=[c["file"].split("/")[-1] for c in CASES])
def test_random_access(case: dict[str, Any], reader: tuple[SoftToken, Any]) -> None:
    tok, handle = reader
    data = (KIT / case["file"]).read_bytes()
    if case["expect"] == "ok":
        r = files.EncryptedFileReader(io.BytesIO(data), tok, handle)
        assert r.size == case["plaintext_size"]
        assert sm3(r.pread(0, r.size)).hex() == case["plaintext_sm3"]
        return
    with pytest.raises(files.FileError) as info:
        r = files.EncryptedFileReader(io.BytesIO(data), tok, handle)
        r.pread(0, r.size)
    if case["code"] in HEADER_CODES:
        _check(case, info.value)  # identical to the streaming reader
    else:
        assert isinstance(info.value, files.PayloadError)
        assert info.value.code in PAYLOAD_CODES


@pytest.mark.parametrize("case", CASES, ids=[c["file"].split("/")[-1] for c in CASES])
def test_inspect(case: dict[str, Any]) -> None:
    """Structural header errors need no key; everything else parses."""
    data = (KIT / case["file"]).read_bytes()
    if case["expect"] == "error" and case["code"] in FORMAT_CODES:
        with pytest.raises(files.FileFormatError) as info:
            files.inspect(data)
        _check(case, info.value)
        with pytest.raises(files.FileFormatError):
            files.inspect(io.BytesIO(data))
    else:
        h = files.inspect(data)
        assert h.size <= len(data)
        assert files.inspect(io.BytesIO(data)) == h


def test_escrow_key_recovers_kit_file() -> None:
    """The manifest's escrow key opens the kit's escrow file (KMC side)."""
    case = next(c for c in CASES if c["file"] == "corpus/ok_escrow")
    data = (KIT / case["file"]).read_bytes()
    kmc = files.KeyIdentity(
        SM2PrivateKey.from_bytes(bytes.fromhex(MANIFEST["escrow"]["private_key"]))
    )
    out = io.BytesIO()
    files.decrypt(io.BytesIO(data), out, kmc)
    assert sm3(out.getvalue()).hex() == case["plaintext_sm3"]
