"""The platform's own TLCP endpoint: ``mstcrypt serve`` terminates TLCP itself with dual
certificates from its own CA (keys in the SS-CC), so enrollment codes, session tokens and
operator requests never cross the network in clear.

The terminal validates the endpoint's certificate against the root preset in its token
and the server name it dialled (:func:`mstcrypt.protocols.tlcp.http_client.tlcp_transport`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mstcrypt.errors import PolicyError
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Profile
from mstcrypt.pki.hostname import canonical_names
from mstcrypt.protocols.tlcp import Credentials

__all__ = ["ENC_IDENTITY", "SIGN_IDENTITY", "platform_credentials"]

SIGN_IDENTITY = "platform-tlcp-sign"
ENC_IDENTITY = "platform-tlcp-enc"


def platform_credentials(kmc: Kmc, names: Sequence[str]) -> Credentials:
    """The endpoint's signing and encryption identities (created and certified on first
    use, re-certified when ``names`` change), as TLCP credentials whose private-key
    operations run in the SS-CC. The names (DNS names and IP addresses, put in canonical
    form: lower-case A-labels, compressed addresses) are the subjectAltName entries, as
    dNSName and iPAddress; ``names[0]`` is also the CN. PolicyError for a malformed name
    or none at all."""
    names = canonical_names(names)
    if not names:
        raise PolicyError("the platform endpoint needs at least one DNS name or IP address")
    sign, sign_cert = kmc.service_identity(
        SIGN_IDENTITY, Profile.GATEWAY_SIGN, names[0], subject_alt_names=names
    )
    enc, enc_cert = kmc.service_identity(
        ENC_IDENTITY, Profile.GATEWAY_ENC, names[0], subject_alt_names=names
    )
    issuing = kmc.chain()[0]
    return Credentials(
        sign_certificate=sign_cert,
        enc_certificate=enc_cert,
        sign=lambda data: sign.sign(data),
        decrypt=enc.decrypt,
        chain=(issuing,),
    )
