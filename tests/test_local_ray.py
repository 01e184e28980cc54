"""A local Ray cluster (packing, training) listens on loopback only."""

from __future__ import annotations

import ipaddress
import re

import psutil
import pytest

from mmexpr.local_ray import start_ray


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_local_cluster_binds_only_loopback_whatever_the_cluster_flag_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # "1" (and unset, on Linux) makes Ray bind every interface; start_ray must undo it.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    before = _listening()
    assert start_ray(None, num_cpus=1, log_to_driver=False)
    import ray  # after start_ray: Ray reads the flag when first imported

    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        opened = _listening() - before
        assert opened, "Ray opened no listening socket?"
        exposed = sorted(f"{ip}:{port}" for ip, port in opened if not _is_loopback(ip))
        assert not exposed, f"listening beyond loopback: {exposed}"
        # The dashboard serves the State API that Ray Train polls; it listens on loopback.
        url = re.search(r"Ray dashboard: http://(127\.0\.0\.1):(\d+)", capsys.readouterr().out)
        assert (url.group(1), int(url.group(2))) in opened
        from ray.util.state import list_nodes

        assert [n.node_ip for n in list_nodes(address=f"http://127.0.0.1:{url.group(2)}", timeout=30)] == ["127.0.0.1"]
    finally:
        ray.shutdown()
