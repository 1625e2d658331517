"""Request bodies of the platform's HTTP API, shared with :mod:`mstcrypt.client`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from mstcrypt.pki import Profile

MAX_VERSION = 2**31 - 1


class CodeRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128)
    subject: dict[str, str]
    profile: str = Profile.DEVICE_SIGN.value
    ttl_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    dns_names: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="DNS names a gateway or server is certified for (subjectAltName)",
    )
    ip_addresses: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="IP addresses a gateway or server is certified for (subjectAltName)",
    )


class EnrollRequest(BaseModel):
    code: str = Field(min_length=4, max_length=64)
    csr: str = Field(min_length=16, max_length=16384, description="PEM PKCS#10 request")


class RevokeRequest(BaseModel):
    reason: str = Field(default="unspecified", max_length=32)


class KeyRevokeRequest(BaseModel):
    reason: str = Field(default="key_compromise", max_length=32)


class OwnerRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128)


class DistributeRequest(BaseModel):
    terminal_public_key: str = Field(
        min_length=130, max_length=130, description="hex 04‖x‖y of the terminal signing key"
    )
    subject: dict[str, str]


class RotateRequest(BaseModel):
    """With ``terminal_public_key`` (and then ``subject``): the envelope comes back to
    the caller. Without it: the new key waits, enveloped to the owner's active signing
    certificate, for the terminal to collect (``GET /kmc/keys/pending``); the subject
    defaults to the current encryption certificate's."""

    owner: str = Field(min_length=1, max_length=128)
    terminal_public_key: str | None = Field(
        default=None,
        min_length=130,
        max_length=130,
        description="hex 04‖x‖y of the terminal signing key (omit: deliver to the terminal)",
    )
    subject: dict[str, str] | None = None

    @model_validator(mode="after")
    def _subject_with_key(self) -> RotateRequest:
        if self.terminal_public_key is not None and self.subject is None:
            raise ValueError("a rotation to a given terminal key needs the subject")
        return self


class RecoveryCreate(BaseModel):
    key_id: str = Field(min_length=1, max_length=64)
    recipient_public_key: str = Field(
        min_length=130, max_length=130, description="hex 04‖x‖y of the new terminal's key"
    )
    reason: str = Field(min_length=3, max_length=500)


class FileRecoveryCreate(BaseModel):
    escrow_stanza: str = Field(
        min_length=4,
        max_length=4096,
        description="base64 DER SM2Cipher from the file's escrow stanza",
    )
    recipient_public_key: str = Field(
        min_length=130, max_length=130, description="hex 04‖x‖y of the new terminal's enc key"
    )
    reason: str = Field(min_length=3, max_length=500)


class RecoveryApproval(BaseModel):
    recipient_fingerprint: str = Field(
        min_length=64,
        max_length=64,
        description="SM3 fingerprint of the recipient key, as GET /admin/recovery/{id} shows it",
    )


class GroupCreate(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    members: list[str] = Field(max_length=10000)


class GroupChange(BaseModel):
    add: list[str] = Field(default=[], max_length=10000)
    remove: list[str] = Field(default=[], max_length=10000)


class LoginResponseBody(BaseModel):
    response: dict[str, Any]
    password: str | None = Field(default=None, max_length=256)


class PasswordBody(BaseModel):
    password: str = Field(min_length=8, max_length=256)


class BackupRequest(BaseModel):
    passphrase: str = Field(min_length=12, max_length=256)
