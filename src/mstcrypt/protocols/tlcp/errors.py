"""The TLCP error: a failed check, with the alert that reports it to the peer."""

from __future__ import annotations

from mstcrypt.errors import MstCryptError
from mstcrypt.protocols.tlcp.constants import AlertDescription

__all__ = ["TLCPError"]


class TLCPError(MstCryptError):
    """The connection failed. ``alert`` is the alert description sent to the peer (or,
    when ``received`` is true, the fatal alert the peer sent). The message says what was
    wrong and never contains key material or application data."""

    def __init__(self, alert: AlertDescription, message: str, *, received: bool = False) -> None:
        self.alert = AlertDescription(alert)
        self.received = received
        super().__init__(f"{message} (alert {self.alert.name.lower()})")
