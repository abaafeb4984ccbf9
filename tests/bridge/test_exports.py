"""The bridge's public names are the intended ones (as tests/test_exports.py does)."""

import iommulab.bridge
import iommulab.bridge.echo

PUBLIC = {"CONTINUE", "DEFAULT_PROTECT", "Backing", "Bridge", "BridgeStats", "Continue",
          "Handler", "Node", "TargetMemory", "fd_window"}


def test_public_names() -> None:
    assert set(iommulab.bridge.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(iommulab.bridge, name)


def test_echo_names() -> None:
    assert set(iommulab.bridge.echo.__all__) == {
        "ECHO_COPY", "ECHO_KILL", "ECHO_NOP", "ECHO_PATH", "ECHO_PID", "ECHO_STRUCT",
        "EchoFile", "EchoHandler"}
