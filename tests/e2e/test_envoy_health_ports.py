import pytest

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions


def picker_endpoints(bootstrap: dict) -> list[tuple[int, int]]:
    cluster = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "infergate_picker")
    out = []
    for lb in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
        ep = lb["endpoint"]
        out.append((ep["address"]["socket_address"]["port_value"], ep["health_check_config"]["port_value"]))
    return out


def test_each_local_replica_is_health_checked_on_its_own_port():
    opts = BootstrapOptions(pickers=("127.0.0.1:9002", "127.0.0.1:9012"), picker_health_ports=(9003, 9013))
    assert picker_endpoints(build_bootstrap(opts)) == [(9002, 9003), (9012, 9013)]


def test_one_health_port_for_all_replicas_by_default():
    opts = BootstrapOptions(pickers=("10.0.0.1:9002", "10.0.0.2:9002"))
    assert picker_endpoints(build_bootstrap(opts)) == [(9002, 9003), (9002, 9003)]


def test_health_ports_must_match_pickers():
    with pytest.raises(ValueError, match="one port per picker"):
        BootstrapOptions(pickers=("127.0.0.1:9002", "127.0.0.1:9012"), picker_health_ports=(9003,))
