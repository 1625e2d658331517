"""The platform's routes, one router per audience:

* :mod:`.public`    — anybody: health, CA certificates, CRLs, the directory, the
                      certified key-escrow certificate;
* :mod:`.ocsp`      — anybody: OCSP (RFC 6960), POST /ocsp and GET /ocsp/{base64};
* :mod:`.enroll`    — a terminal holding a one-time enrollment code;
* :mod:`.login`     — certificate login (§7.3) and the session it yields;
* :mod:`.terminal`  — a terminal with a session token: its own KDK and group keys;
* :mod:`.admin`     — operators, one sub-router per role.
"""

from mstcrypt.server.routers import admin, enroll, login, ocsp, public, terminal

__all__ = ["admin", "enroll", "login", "ocsp", "public", "terminal"]
