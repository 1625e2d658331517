"""WAI/WPI (GB 15629.11-2003/XG1-2006): WAPI certificate authentication through an ASU,
unicast and multicast key negotiation, and WPI data protection, as sans-IO machines.

* :mod:`.messages`: strict encoders/decoders of every WAI packet (header, 12 subtypes,
  fragmentation and reassembly) and the WAPI information element;
* :mod:`.suites`: the standard suite (ECDSA/ECDH on the WAPI 192-bit curve, SHA-256,
  KD-HMAC-SHA256) and our SM suite (SM2/SM3), with the BK/USK/MSK key hierarchy;
* :mod:`.wpi`: SM4-OFB encryption and SM4-CBC-MAC MIC of data frames, PN and replay;
* :mod:`.roles`: the sans-IO machines :class:`Asue`, :class:`AeSession` (grouped by
  :class:`AccessPoint`) and :class:`Asu`; :mod:`.events` what they report;
* :mod:`.certs`: standard-suite X.509 certificates and the ASU's verdicts on them;
  :mod:`.pcap`: Ethernet/pcap framing; :mod:`.testing`: an in-memory pump.

One association in memory (``cred_*`` are :class:`Credential` objects: certificate DER and
a signer; ``validator(der, at)`` returns a :class:`VerifyResult`)::

    ie = messages.WapiIE(akm_suites=(SM.akm,))
    asue = Asue(cred_sta, trusted_asus=[asu_cert], own_mac=sta, ae_mac=ap, ie=ie, ae_ie=ie)
    point = AccessPoint(cred_ap, asu_cert=asu_cert, mac=ap, ie=ie)
    ae = point.associate(sta, ie, now)            # queues the activation
    asu = Asu(cred_asu, validator, SM)
    # move packets: ae.data_to_send() -> asue.receive(p, now) / asu.handle(p, at) ...
    # until both report events.Associated; UnicastKeyInstalled gives the WPI keys.

One :class:`Asue` serves one association (a new association gets a new object).
"""

from mstcrypt.protocols.wai.constants import (
    ETHERTYPE_WAI,
    AccessResult,
    Flag,
    Subtype,
    VerifyResult,
)
from mstcrypt.protocols.wai.errors import (
    WaiDecodeError,
    WaiError,
    WaiReplayError,
    WaiStateError,
    WaiVerifyError,
    WpiDecodeError,
    WpiError,
    WpiMicError,
    WpiReplayError,
)
from mstcrypt.protocols.wai.roles import AccessPoint, AeSession, Asu, Asue, Credential, State
from mstcrypt.protocols.wai.suites import SM, STANDARD, SoftSigner, Suite

__all__ = [
    "ETHERTYPE_WAI",
    "SM",
    "STANDARD",
    "AccessPoint",
    "AccessResult",
    "AeSession",
    "Asu",
    "Asue",
    "Credential",
    "Flag",
    "SoftSigner",
    "State",
    "Subtype",
    "Suite",
    "VerifyResult",
    "WaiDecodeError",
    "WaiError",
    "WaiReplayError",
    "WaiStateError",
    "WaiVerifyError",
    "WpiDecodeError",
    "WpiError",
    "WpiMicError",
    "WpiReplayError",
]
