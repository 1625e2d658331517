"""Per-profile packet cryptography. A transform holds the session keys of one master key
and seals/opens the parts the context hands it; framing, indices and replay live in
:mod:`mstcrypt.protocols.srtp.context`."""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable

from mstcrypt.crypto import aes, sm4, zuc
from mstcrypt.crypto.sm3 import HmacSM3
from mstcrypt.errors import DecryptionError
from mstcrypt.protocols.srtp import kdf
from mstcrypt.protocols.srtp.errors import SrtpAuthError
from mstcrypt.protocols.srtp.profiles import Cipher, Mac, Profile

_MASK32 = 0xFFFFFFFF


class Transform:
    """Interface: SRTP/SRTCP seal and open for one master key."""

    profile: Profile

    def rtp_seal(self, header: bytes, payload: bytes, ssrc: int, index: int) -> bytes:
        raise NotImplementedError

    def rtp_open(self, packet: bytes, hlen: int, ssrc: int, index: int) -> bytes:
        """Check the tag of ``packet`` (header ‖ ciphertext ‖ tag) and return the payload."""
        raise NotImplementedError

    def rtcp_seal(self, packet: bytes, ssrc: int, index: int) -> bytes:
        raise NotImplementedError

    def rtcp_open(self, packet: bytes, ssrc: int, index: int, encrypted: bool) -> bytes:
        """Check the tag and return the plain RTCP packet (header ‖ payload)."""
        raise NotImplementedError


def _xor_iv(salt: bytes, ssrc: int, index: int) -> bytes:
    """RFC 3711 §4.1.1: IV = (k_s · 2^16) ⊕ (SSRC · 2^64) ⊕ (i · 2^16)."""
    v = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    return v.to_bytes(16, "big")


class CtrHmac(Transform):
    """AES-CM or SM4-CM with HMAC-SHA1 or HMAC-SM3 (RFC 3711 §4.1.1, §4.2.1)."""

    def __init__(self, profile: Profile, master_key: bytes, master_salt: bytes) -> None:
        self.profile = profile
        p = profile
        d = kdf.derive
        self._ctr: Callable[[bytes, bytes, bytes], bytes] = (
            aes.ctr if p.cipher is Cipher.AES_CM else sm4.ctr
        )
        self._rtp_ke = d(p, master_key, master_salt, kdf.LABEL_RTP_ENCRYPTION, p.key_len)
        ka = d(p, master_key, master_salt, kdf.LABEL_RTP_AUTH, p.auth_key_len)
        self._rtp_ks = d(p, master_key, master_salt, kdf.LABEL_RTP_SALT, p.session_salt_len)
        self._rtcp_ke = d(p, master_key, master_salt, kdf.LABEL_RTCP_ENCRYPTION, p.key_len)
        kca = d(p, master_key, master_salt, kdf.LABEL_RTCP_AUTH, p.auth_key_len)
        self._rtcp_ks = d(p, master_key, master_salt, kdf.LABEL_RTCP_SALT, p.session_salt_len)
        self._rtp_mac = self._mac_factory(ka)
        self._rtcp_mac = self._mac_factory(kca)
        self._t = p.srtp_tag_len
        self._tc = p.srtcp_tag_len

    def _mac_factory(self, key: bytes) -> Callable[[bytes], bytes]:
        if self.profile.mac is Mac.HMAC_SHA1:
            base = hmac.new(key, digestmod="sha1")

            def sha1(data: bytes) -> bytes:
                h = base.copy()
                h.update(data)
                return h.digest()

            return sha1
        base_sm3 = HmacSM3(key)

        def sm3(data: bytes) -> bytes:
            h = base_sm3.copy()
            h.update(data)
            return h.digest()

        return sm3

    def rtp_seal(self, header: bytes, payload: bytes, ssrc: int, index: int) -> bytes:
        ct = self._ctr(self._rtp_ke, _xor_iv(self._rtp_ks, ssrc, index), payload)
        m = header + ct
        tag = self._rtp_mac(m + (index >> 16).to_bytes(4, "big"))
        return m + tag[: self._t]

    def rtp_open(self, packet: bytes, hlen: int, ssrc: int, index: int) -> bytes:
        t = self._t
        m = packet[:-t]
        tag = self._rtp_mac(m + (index >> 16).to_bytes(4, "big"))
        if not hmac.compare_digest(tag[:t], packet[-t:]):
            raise SrtpAuthError("SRTP authentication tag does not match")
        return self._ctr(self._rtp_ke, _xor_iv(self._rtp_ks, ssrc, index), m[hlen:])

    def rtcp_seal(self, packet: bytes, ssrc: int, index: int) -> bytes:
        ct = self._ctr(self._rtcp_ke, _xor_iv(self._rtcp_ks, ssrc, index), packet[8:])
        m = packet[:8] + ct + (0x80000000 | index).to_bytes(4, "big")
        return m + self._rtcp_mac(m)[: self._tc]

    def rtcp_open(self, packet: bytes, ssrc: int, index: int, encrypted: bool) -> bytes:
        t = self._tc
        m = packet[:-t]
        if not hmac.compare_digest(self._rtcp_mac(m)[:t], packet[-t:]):
            raise SrtpAuthError("SRTCP authentication tag does not match")
        body = m[8:-4]
        if encrypted:
            body = self._ctr(self._rtcp_ke, _xor_iv(self._rtcp_ks, ssrc, index), body)
        return m[:8] + body


class Gcm(Transform):
    """RFC 7714 AEAD with AES-128 or SM4 (16-byte tag, 96-bit salt)."""

    def __init__(self, profile: Profile, master_key: bytes, master_salt: bytes) -> None:
        self.profile = profile
        p = profile
        d = kdf.derive
        ke = d(p, master_key, master_salt, kdf.LABEL_RTP_ENCRYPTION, p.key_len)
        self._rtp_salt = int.from_bytes(
            d(p, master_key, master_salt, kdf.LABEL_RTP_SALT, p.session_salt_len), "big"
        )
        kce = d(p, master_key, master_salt, kdf.LABEL_RTCP_ENCRYPTION, p.key_len)
        self._rtcp_salt = int.from_bytes(
            d(p, master_key, master_salt, kdf.LABEL_RTCP_SALT, p.session_salt_len), "big"
        )
        self._rtp_seal, self._rtp_open = self._aead(ke)
        self._rtcp_seal, self._rtcp_open = self._aead(kce)

    def _aead(
        self, key: bytes
    ) -> tuple[Callable[[bytes, bytes, bytes], bytes], Callable[[bytes, bytes, bytes], bytes]]:
        if self.profile.cipher is Cipher.AES_GCM:
            g = aes.AesGcm(key)
            return g.encrypt, g.decrypt
        return (
            lambda n, pt, aad: sm4.gcm_encrypt(key, n, pt, aad),
            lambda n, ct, aad: sm4.gcm_decrypt(key, n, ct, aad),
        )

    def _rtp_iv(self, ssrc: int, index: int) -> bytes:
        # 00 00 ‖ SSRC ‖ ROC ‖ SEQ, XOR the 96-bit session salt
        return (((ssrc << 48) | index) ^ self._rtp_salt).to_bytes(12, "big")

    def _rtcp_iv(self, ssrc: int, index: int) -> bytes:
        # 00 00 ‖ SSRC ‖ 00 00 ‖ 0 ‖ SRTCP index (31 bits)
        return (((ssrc << 48) | index) ^ self._rtcp_salt).to_bytes(12, "big")

    def rtp_seal(self, header: bytes, payload: bytes, ssrc: int, index: int) -> bytes:
        return header + self._rtp_seal(self._rtp_iv(ssrc, index), payload, header)

    def rtp_open(self, packet: bytes, hlen: int, ssrc: int, index: int) -> bytes:
        try:
            return self._rtp_open(self._rtp_iv(ssrc, index), packet[hlen:], packet[:hlen])
        except DecryptionError:
            raise SrtpAuthError("SRTP GCM authentication tag does not match") from None

    def rtcp_seal(self, packet: bytes, ssrc: int, index: int) -> bytes:
        trailer = (0x80000000 | index).to_bytes(4, "big")
        sealed = self._rtcp_seal(self._rtcp_iv(ssrc, index), packet[8:], packet[:8] + trailer)
        return packet[:8] + sealed + trailer

    def rtcp_open(self, packet: bytes, ssrc: int, index: int, encrypted: bool) -> bytes:
        trailer = packet[-4:]
        body = packet[:-4]
        iv = self._rtcp_iv(ssrc, index)
        try:
            if encrypted:
                return body[:8] + self._rtcp_open(iv, body[8:], body[:8] + trailer)
            self._rtcp_open(iv, body[-16:], body[:-16] + trailer)
            return body[:-16]
        except DecryptionError:
            raise SrtpAuthError("SRTCP GCM authentication tag does not match") from None


class Zuc(Transform):
    """128-EEA3 + 128-EIA3 with per-stream session keys (docs/voice.md §2.3).

    SRTP: COUNT = (ROC mod 2^16) · 2^16 + SEQ under keys bound to (SSRC, ROC DIV 2^16);
    BEARER 0, DIRECTION 0. The MAC covers header ‖ ciphertext ‖ ROC like RFC 3711.
    SRTCP: COUNT = SRTCP index, keys bound to (SSRC, 0), BEARER 1; the MAC covers
    header ‖ ciphertext ‖ E‖index.
    """

    MAX_CACHED = 64

    def __init__(self, profile: Profile, master_key: bytes, master_salt: bytes) -> None:
        self.profile = profile
        self._mk = master_key
        self._ms = master_salt
        self._keys: OrderedDict[tuple[int, int, bool], tuple[bytes, bytes]] = OrderedDict()

    def _stream_keys(self, ssrc: int, roc_high: int, rtcp: bool) -> tuple[bytes, bytes]:
        k = (ssrc, roc_high, rtcp)
        got = self._keys.get(k)
        if got is not None:
            self._keys.move_to_end(k)
            return got
        p = self.profile
        le, la = (
            (kdf.LABEL_RTCP_ENCRYPTION, kdf.LABEL_RTCP_AUTH)
            if rtcp
            else (kdf.LABEL_RTP_ENCRYPTION, kdf.LABEL_RTP_AUTH)
        )
        ke = kdf.derive(p, self._mk, self._ms, le, 16, ssrc=ssrc, roc_high=roc_high)
        ka = kdf.derive(p, self._mk, self._ms, la, 16, ssrc=ssrc, roc_high=roc_high)
        self._keys[k] = (ke, ka)
        while len(self._keys) > self.MAX_CACHED:
            self._keys.popitem(last=False)
        return ke, ka

    def rtp_seal(self, header: bytes, payload: bytes, ssrc: int, index: int) -> bytes:
        ke, ka = self._stream_keys(ssrc, index >> 32, False)
        count = index & _MASK32
        ct = zuc.eea3(ke, count, 0, 0, payload, len(payload) * 8) if payload else b""
        m = header + ct
        a = m + (index >> 16).to_bytes(4, "big")
        return m + zuc.eia3(ka, count, 0, 0, a, len(a) * 8)

    def rtp_open(self, packet: bytes, hlen: int, ssrc: int, index: int) -> bytes:
        ke, ka = self._stream_keys(ssrc, index >> 32, False)
        count = index & _MASK32
        m = packet[:-4]
        a = m + (index >> 16).to_bytes(4, "big")
        if not hmac.compare_digest(zuc.eia3(ka, count, 0, 0, a, len(a) * 8), packet[-4:]):
            raise SrtpAuthError("SRTP EIA3 MAC does not match")
        ct = m[hlen:]
        return zuc.eea3(ke, count, 0, 0, ct, len(ct) * 8) if ct else b""

    def rtcp_seal(self, packet: bytes, ssrc: int, index: int) -> bytes:
        ke, ka = self._stream_keys(ssrc, 0, True)
        body = packet[8:]
        ct = zuc.eea3(ke, index, 1, 0, body, len(body) * 8) if body else b""
        m = packet[:8] + ct + (0x80000000 | index).to_bytes(4, "big")
        return m + zuc.eia3(ka, index, 1, 0, m, len(m) * 8)

    def rtcp_open(self, packet: bytes, ssrc: int, index: int, encrypted: bool) -> bytes:
        ke, ka = self._stream_keys(ssrc, 0, True)
        m = packet[:-4]
        if not hmac.compare_digest(zuc.eia3(ka, index, 1, 0, m, len(m) * 8), packet[-4:]):
            raise SrtpAuthError("SRTCP EIA3 MAC does not match")
        body = m[8:-4]
        if encrypted and body:
            body = zuc.eea3(ke, index, 1, 0, body, len(body) * 8)
        return m[:8] + body


def make_transform(profile: Profile, master_key: bytes, master_salt: bytes) -> Transform:
    if profile.cipher in (Cipher.AES_CM, Cipher.SM4_CM):
        return CtrHmac(profile, master_key, master_salt)
    if profile.cipher in (Cipher.AES_GCM, Cipher.SM4_GCM):
        return Gcm(profile, master_key, master_salt)
    return Zuc(profile, master_key, master_salt)
