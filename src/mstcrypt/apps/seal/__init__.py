"""Electronic seals (T/ZSA 37-2020 §7.4, Annex C): GB/T 38540 seals made by an
administrator, stamped by terminals whose signing key is a two-party SM2 key shared with
the seal server (:mod:`mstcrypt.crypto.twoparty`).

Server side: :class:`mstcrypt.apps.seal.service.SealService`. Terminal side:
:class:`mstcrypt.apps.seal.terminal.SealTerminal`. See docs/seal.md and
docs/two-party-sm2.md.
"""

__all__: list[str] = []
