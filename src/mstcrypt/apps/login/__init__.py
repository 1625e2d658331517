"""User certificate login (T/ZSA 37-2020 §7.3): the information system's service and
the terminal's client, over :mod:`mstcrypt.protocols.login`."""
