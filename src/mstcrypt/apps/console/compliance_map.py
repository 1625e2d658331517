# ruff: noqa: E501 - the guide's requirement texts are kept whole, one per line
"""The guide's Annexes A and B as data: each row a clause of GB/T 22239-2019 (Table A.1)
or GM/T 0054-2018 (Table B.1) and the sections of T/ZSA 37-2020 the guide maps it to.

Section keys: ``"6.1"``…``"7.6"`` (the ten applications), ``"module"`` (密码模块部署,
the cryptographic modules of 6.1–6.4 and 7.1–7.6), ``"keys"`` (密钥管理, their key
management) and ``"whole"`` (整个标准, the guide as a whole). The requirement texts are
the guide's, shortened where it repeats the standard word for word.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANNEX_A", "ANNEX_B", "ROWS", "SECTIONS", "Clause"]

#: guide section key -> (title in the guide, English title)
SECTIONS: dict[str, tuple[str, str]] = {
    "6.1": ("6.1 可信启动", "trusted boot"),
    "6.2": ("6.2 App 签名与验证", "app signing and verification"),
    "6.3": ("6.3 无线局域网接入", "WLAN access"),
    "6.4": ("6.4 网络传输加密", "network transport encryption (TLCP)"),
    "7.1": ("7.1 语音电话加密", "voice call encryption"),
    "7.2": ("7.2 电子邮件加密", "e-mail encryption"),
    "7.3": ("7.3 用户证书登录", "user certificate login"),
    "7.4": ("7.4 电子签章", "electronic seals"),
    "7.5": ("7.5 即时通讯加密", "instant messaging encryption"),
    "7.6": ("7.6 文件加密", "file encryption"),
    "module": ("6.1-6.4、7.1-7.6 密码模块部署", "cryptographic module deployment"),
    "keys": ("6.1-6.4、7.1-7.6 密钥管理", "key management"),
    "whole": ("整个标准", "the guide as a whole"),
}


@dataclass(frozen=True)
class Clause:
    """One row of Table A.1 or B.1. ``id`` is unique in the report (annex, level where
    the standard repeats a clause per level, clause number, item)."""

    id: str
    annex: str  # "A" | "B"
    standard: str
    group: str  # level (A) or chapter (B)
    clause: str
    title: str
    requirement: str
    sections: tuple[str, ...]
    #: the clause asks for a hardware cryptographic module (GB/T 22239 level 4)
    hardware: bool = False


_A = "GB/T 22239-2019"
_B = "GM/T 0054-2018"
_L1, _L2, _L3, _L4 = "第一级 level 1", "第二级 level 2", "第三级 level 3", "第四级 level 4"
_APPS = ("6.1", "6.2", "6.3", "6.4", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6")
_INTEGRITY = ("6.4", "7.1", "7.4", "7.5", "7.6")
_CONFIDENTIALITY = ("6.4", "7.1", "7.2", "7.5", "7.6")
_TRUSTED = "可基于可信根对计算设备的系统引导程序、系统程序等进行可信验证，并在检测到其可信性受到破坏后进行报警"
_PRODUCTS = "应确保密码产品与服务的采购和使用符合国家密码管理主要部门的要求"
_MGMT = "a) 应遵循密码相关国家标准和行业标准；b) 应使用国家密码管理主管部门认证核准的密码技术和产品"
_INTEGRITY_TXT = "应采用校验技术或密码技术保证重要数据在传输过程中（a）和存储过程中（b）的完整性"
_CONF_TXT = "应采用密码技术保证重要数据在传输过程中（a）和存储过程中（b）的保密性"
_APP_CTRL = "应只允许指定（第二级：可靠）证书签名的应用软件安装和运行"
_APP_DEV = "应保证开发移动业务应用软件的签名证书合法性"
_WLAN = "无线接入设备应开启接入认证功能，并支持采用认证服务器认证或国家密码管理机构批准的密码模块进行认证"
_AUTH = (
    "应采用两种或两种以上组合的鉴别技术对用户进行身份鉴别，且其中一种鉴别技术至少使用密码技术来实现"
)

ANNEX_A: tuple[Clause, ...] = (
    Clause("A-1-6.1.4.5", "A", _A, _L1, "6.1.4.5", "可信验证", _TRUSTED, ("6.1",)),
    Clause(
        "A-1-6.3.4.1",
        "A",
        _A,
        _L1,
        "6.3.4.1",
        "移动应用软件采购",
        "应保证移动终端安装、运行的应用软件来自可靠分发渠道或使用可靠证书签名",
        ("6.2",),
    ),
    Clause(
        "A-2-7.1.4.6",
        "A",
        _A,
        _L2,
        "7.1.4.6",
        "可信验证",
        _TRUSTED + "，并将验证结果形成审计记录送至安全管理中心",
        ("6.1",),
    ),
    Clause("A-2-7.1.9.3", "A", _A, _L2, "7.1.9.3 b)", "产品采购和使用", _PRODUCTS, ("module",)),
    Clause("A-2-7.1.10.9", "A", _A, _L2, "7.1.10.9", "密码管理", _MGMT, ("module", "keys")),
    Clause("A-2-7.3.3.1", "A", _A, _L2, "7.3.3.1 b)", "移动应用管控", _APP_CTRL, ("6.2",)),
    Clause("A-2-7.3.4.2", "A", _A, _L2, "7.3.4.2 b)", "移动应用软件开发", _APP_DEV, ("6.2",)),
    Clause(
        "A-3-8.1.2.2",
        "A",
        _A,
        _L3,
        "8.1.2.2",
        "通信传输",
        "a) 应采用校验技术或密码技术保证通信过程中数据的完整性；b) 应采用密码技术保证通信过程中数据的保密性",
        ("6.4",),
    ),
    Clause("A-3-8.1.4.1", "A", _A, _L3, "8.1.4.1 d)", "身份鉴别", _AUTH, ("7.3",)),
    Clause(
        "A-3-8.1.4.6",
        "A",
        _A,
        _L3,
        "8.1.4.6",
        "可信验证",
        _TRUSTED
        + "，在应用程序的关键执行环节进行动态可信验证，并将验证结果形成审计记录送至安全管理中心",
        ("6.1",),
    ),
    Clause("A-3-8.1.4.7", "A", _A, _L3, "8.1.4.7", "数据完整性", _INTEGRITY_TXT, _INTEGRITY),
    Clause("A-3-8.1.4.8", "A", _A, _L3, "8.1.4.8", "数据保密性", _CONF_TXT, _CONFIDENTIALITY),
    Clause(
        "A-3-8.1.9.2",
        "A",
        _A,
        _L3,
        "8.1.9.2 b)",
        "安全方案设计",
        "应进行安全整体规划和安全方案设计，设计内容应包括密码技术相关内容，并形成配套文件",
        ("whole",),
    ),
    Clause("A-3-8.1.9.3", "A", _A, _L3, "8.1.9.3 b)", "产品采购和使用", _PRODUCTS, ("module",)),
    Clause(
        "A-3-8.1.9.7",
        "A",
        _A,
        _L3,
        "8.1.9.7 b)",
        "测试验收",
        "应进行上线前的安全性测试，并出具安全测试报告，安全测试报告应包含密码应用安全性测试相关内容",
        ("whole",),
    ),
    Clause("A-3-8.1.10.9", "A", _A, _L3, "8.1.10.9", "密码管理", _MGMT, ("module", "keys")),
    Clause("A-3-8.3.2.2", "A", _A, _L3, "8.3.2.2", "访问控制", _WLAN, ("6.3",)),
    Clause("A-3-8.3.3.2", "A", _A, _L3, "8.3.3.2 b)", "移动应用管控", _APP_CTRL, ("6.2",)),
    Clause("A-3-8.3.4.2", "A", _A, _L3, "8.3.4.2 b)", "移动应用软件开发", _APP_DEV, ("6.2",)),
    Clause(
        "A-4-9.1.2.2",
        "A",
        _A,
        _L4,
        "9.1.2.2 c) d)",
        "通信传输",
        "c) 应在通信前基于密码技术对通信的双方进行验证或认证；d) 应基于硬件密码模块对重要通信过程进行密码运算和密钥管理",
        ("6.4",),
        hardware=True,
    ),
    Clause(
        "A-4-9.1.3.6",
        "A",
        _A,
        _L4,
        "9.1.3.6",
        "可信验证（边界设备）",
        _TRUSTED + "（边界设备），并将验证结果形成审计记录送至安全管理中心，并进行动态关联感知",
        ("6.1",),
    ),
    Clause("A-4-9.1.4.1", "A", _A, _L4, "9.1.4.1 d)", "身份鉴别", _AUTH, ("7.3",)),
    Clause(
        "A-4-9.1.4.6",
        "A",
        _A,
        _L4,
        "9.1.3.6（计算设备）",
        "可信验证（计算设备）",
        _TRUSTED + "，在应用程序的所有执行环节进行动态可信验证，并进行动态关联感知",
        ("6.1",),
    ),
    Clause(
        "A-4-9.1.4.7",
        "A",
        _A,
        _L4,
        "9.1.4.7",
        "数据完整性",
        _INTEGRITY_TXT + "；c) 应采用密码技术提供数据原发证据和数据接收证据，实现抗抵赖",
        _INTEGRITY,
    ),
    Clause("A-4-9.1.4.8", "A", _A, _L4, "9.1.4.8", "数据保密性", _CONF_TXT, _CONFIDENTIALITY),
    Clause(
        "A-4-9.1.10.9",
        "A",
        _A,
        _L4,
        "9.1.10.9",
        "密码管理",
        _MGMT + "；c) 应采用硬件密码模块实现密码运算和密钥管理",
        ("module", "keys"),
        hardware=True,
    ),
    Clause("A-4-9.3.2.2", "A", _A, _L4, "9.3.2.2", "访问控制", _WLAN, ("6.3",)),
    Clause("A-4-9.3.3.2", "A", _A, _L4, "9.3.3.2 b)", "移动应用管控", _APP_CTRL, ("6.2",)),
    Clause("A-4-9.3.4.2", "A", _A, _L4, "9.3.4.2 b)", "移动应用软件开发", _APP_DEV, ("6.2",)),
)

_NET, _DEV, _APPDATA = "7.2 网络和通信安全", "7.3 设备和计算安全", "7.4 应用和数据安全"
ANNEX_B: tuple[Clause, ...] = (
    Clause(
        "B-7.2.1-a",
        "B",
        _B,
        _NET,
        "7.2.1 a)",
        "设备接入认证",
        "采用密码技术对连接到内部网络的设备进行安全认证",
        ("6.3",),
    ),
    Clause(
        "B-7.2.1-bcd",
        "B",
        _B,
        _NET,
        "7.2.1 b) c) d)",
        "通信安全",
        "采用密码技术对通信的双方身份进行认证，保证通信过程中数据的完整性和敏感信息数据字段或整个报文的机密性",
        ("6.4",),
    ),
    Clause(
        "B-7.2.1-e",
        "B",
        _B,
        _NET,
        "7.2.1 e)",
        "访问控制信息完整性",
        "采用密码技术保证网络边界访问控制信息、系统资源访问控制信息的完整性",
        ("6.3",),
    ),
    Clause(
        "B-7.3.1-a",
        "B",
        _B,
        _DEV,
        "7.3.1 a)",
        "身份鉴别",
        "采用密码技术对登录的用户进行身份鉴别",
        ("7.3",),
    ),
    Clause(
        "B-7.3.1-d",
        "B",
        _B,
        _DEV,
        "7.3.1 d)",
        "重要程序完整性",
        "采用密码技术的完整性功能对重要程序或文件进行完整性保护",
        ("6.1", "6.2"),
    ),
    Clause(
        "B-7.4.1-a",
        "B",
        _B,
        _APPDATA,
        "7.4.1 a)",
        "身份鉴别",
        "采用密码技术对登录的用户进行身份鉴别",
        ("7.3",),
    ),
    Clause(
        "B-7.4.1-d",
        "B",
        _B,
        _APPDATA,
        "7.4.1 d)",
        "传输机密性、完整性",
        "采用密码技术保证重要数据在传输过程中的机密性、完整性",
        ("7.5", "7.1", "7.2"),
    ),
    Clause(
        "B-7.4.1-e",
        "B",
        _B,
        _APPDATA,
        "7.4.1 e)",
        "存储机密性、完整性",
        "采用密码技术保证重要数据在存储过程中的机密性、完整性",
        ("7.6",),
    ),
    Clause(
        "B-7.4.1-f",
        "B",
        _B,
        _APPDATA,
        "7.4.1 f)",
        "程序加载和卸载控制",
        "采用密码技术对重要程序的加载和卸载进行安全控制",
        ("6.2",),
    ),
    Clause(
        "B-7.4.1-g",
        "B",
        _B,
        _APPDATA,
        "7.4.1 g)",
        "不可否认性",
        "采用密码技术实现实体行为的不可否认性",
        ("7.4",),
    ),
    Clause(
        "B-8.1",
        "B",
        _B,
        "8 密钥管理",
        "8.1",
        "密钥管理总则",
        "密钥的生成、存储、分发、导入、导出、使用、备份、恢复、归档与销毁等环节的管理和策略制定",
        ("keys",),
    ),
    Clause(
        "B-9",
        "B",
        _B,
        "9 安全管理",
        "9.1-9.4",
        "制度、人员、实施、应急",
        "安全管理：制度、人员、实施、应急",
        ("keys",),
    ),
)

ROWS: tuple[Clause, ...] = ANNEX_A + ANNEX_B
assert len({r.id for r in ROWS}) == len(ROWS)
assert all(s in SECTIONS for r in ROWS for s in r.sections)
assert set(_APPS) <= set(SECTIONS)
