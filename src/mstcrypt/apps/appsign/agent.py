"""The terminal's install agent: install only what passes the double verification, and
re-verify at every launch.

Layout of the agent's directory::

    DIR/apps/<package>.apk   the installed package (copied, then renamed into place)
    DIR/state.json           per package: versionCode, SM3 of the installed file, and the
                             launch cache (cache key, valid until)

At launch the installed file is hashed (SM3, streaming); a file that differs from what was
installed is refused outright. Otherwise, when the cache key (SM3 over the file hash, the
policy's fingerprint and the CRLs' fingerprints) is the one recorded and the cached
verdict has not passed its ``valid until`` (the earliest notAfter of the certificates and
nextUpdate of the CRLs), the signatures are not checked again; a new CRL, a changed
policy or the passage of that time makes the launch verify in full. Installing refuses a
versionCode lower than the installed one (downgrade); the same version may be
reinstalled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from mstcrypt.apps.appsign.errors import AppPolicyError, AppVerificationError
from mstcrypt.apps.appsign.package import CHUNK_SIZE
from mstcrypt.apps.appsign.verify import PackageInfo, Policy, Verdict, inspect, verify_package
from mstcrypt.errors import KeyStoreError
from mstcrypt.pki import CRL

__all__ = ["InstallAgent", "InstalledApp", "file_sm3"]

_PACKAGE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")


def file_sm3(path: Path) -> str:
    h = hashes.Hash(hashes.SM3())
    with open(path, "rb") as f:
        while data := f.read(CHUNK_SIZE):
            h.update(data)
    return h.finalize().hex()


@dataclass(frozen=True)
class InstalledApp:
    package: str
    version_code: int
    path: Path
    file_sm3: str
    #: True when the launch check was answered from the cache
    cached: bool = False


class InstallAgent:
    """Install agent over directory ``root`` under ``policy``, checking with ``crls``."""

    def __init__(self, root: str | os.PathLike[str], policy: Policy, crls: Sequence[CRL] = ()):
        self.root = Path(root)
        self.policy = policy
        self.crls = tuple(crls)
        (self.root / "apps").mkdir(parents=True, exist_ok=True)

    # --- state ---------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.root / "state.json"

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._state_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"apps": {}}
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"install agent state is unreadable: {exc}") from None
        apps = doc.get("apps") if isinstance(doc, dict) else None
        if not isinstance(apps, dict) or not all(
            isinstance(e, dict)
            and isinstance(e.get("version_code"), int)
            and isinstance(e.get("file_sm3"), str)
            and isinstance(e.get("valid_until"), str)
            for e in apps.values()
        ):
            raise KeyStoreError("install agent state is malformed")
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path())

    def _cache_key(self, digest: str) -> str:
        h = hashes.Hash(hashes.SM3())
        h.update(digest.encode() + b"|" + self.policy.fingerprint.encode())
        for crl in sorted(c.fingerprint for c in self.crls):
            h.update(b"|" + crl.encode())
        return h.finalize().hex()

    def _verify(self, source: Path | PackageInfo, at: datetime | None) -> Verdict:
        return verify_package(source, self.policy, crls=self.crls, at=at)

    # --- operations ----------------------------------------------------------------------
    def install(self, apk: str | os.PathLike[str], *, at: datetime | None = None) -> InstalledApp:
        """Verify ``apk`` and install it; raises the verification's error otherwise."""
        src = Path(apk)
        fd, tmp_name = tempfile.mkstemp(prefix=".install-", dir=self.root / "apps")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            # verify the agent's own copy, so what is checked is what gets installed
            shutil.copyfile(src, tmp)
            verdict = self._verify(inspect(tmp), at)
            if not _PACKAGE.match(verdict.package):
                raise AppPolicyError("package-mismatch", "the package name is not valid")
            doc = self._load()
            old = doc["apps"].get(verdict.package)
            if old is not None and verdict.version_code < int(old["version_code"]):
                raise AppPolicyError(
                    "downgrade",
                    f"{verdict.package} {verdict.version_code} is older than the installed "
                    f"{old['version_code']}",
                )
            digest = file_sm3(tmp)
            dest = self.root / "apps" / f"{verdict.package}.apk"
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        doc["apps"][verdict.package] = {
            "version_code": verdict.version_code,
            "file_sm3": digest,
            "cache_key": self._cache_key(digest),
            "valid_until": verdict.not_after.isoformat(),
        }
        self._save(doc)
        return InstalledApp(verdict.package, verdict.version_code, dest, digest)

    def launch(self, package: str, *, at: datetime | None = None) -> InstalledApp:
        """The check before ``package`` runs: the installed file is unchanged, and its
        verdict is cached for this policy and these CRLs or verified again."""
        doc = self._load()
        entry = doc["apps"].get(package)
        if entry is None or not _PACKAGE.match(package):
            raise AppPolicyError("not-installed", f"{package!r} is not installed")
        path = self.root / "apps" / f"{package}.apk"
        try:
            digest = file_sm3(path)
        except FileNotFoundError:
            raise AppVerificationError(
                "not-installed", f"the installed file of {package} is missing"
            ) from None
        if digest != entry["file_sm3"]:
            raise AppVerificationError(
                "digest-mismatch", f"the installed file of {package} changed since install"
            )
        when = at or datetime.now(UTC)
        key = self._cache_key(digest)
        try:
            until = datetime.fromisoformat(entry["valid_until"])
        except ValueError:
            raise KeyStoreError("install agent state is malformed") from None
        if entry.get("cache_key") == key and when < until:
            return InstalledApp(package, int(entry["version_code"]), path, digest, cached=True)
        verdict = self._verify(path, at)
        entry["cache_key"] = key
        entry["valid_until"] = verdict.not_after.isoformat()
        self._save(doc)
        return InstalledApp(package, verdict.version_code, path, digest)

    def installed(self) -> dict[str, int]:
        """Installed packages and their versionCode."""
        return {k: int(v["version_code"]) for k, v in self._load()["apps"].items()}
