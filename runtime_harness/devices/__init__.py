"""Where a profile runs: `host` (this machine) or an Android device over adb (`--device SERIAL`)."""
from __future__ import annotations

from runtime_harness.devices.base import DeviceInfo, DeviceKind

__all__ = ["DeviceInfo", "DeviceKind"]
