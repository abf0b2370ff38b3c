"""What a profile ran on: one record for the host, a phone or an emulator.

Every results.json carries one of these so numbers are never separated from the machine that
produced them (an emulator's latency says little about a phone's, and says so by its `kind`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DeviceKind = Literal["host", "emulator", "phone", "arm64"]  # arm64: aarch64 Linux under qemu user-mode


@dataclass
class DeviceInfo:
    kind: DeviceKind
    serial: str
    model: str
    soc: str
    abi: str
    os_version: str
    fingerprint: str
    is_emulator: bool
    manufacturer: str = ""
    sdk: str = ""
    # facts worth keeping that have no field of their own (kernel, cpu count, adb transport...)
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One short human line, for table headers and error messages."""
        who = f"{self.manufacturer} {self.model}".strip()
        return f"{who} ({self.kind}, {self.soc}, {self.abi}, {self.os_version})"
