"""The agent's data-plane layer against a fake host: wg dumps parsed without keeping secrets, peers and
tunnel ports reconciled to what is desired (and a second pass changes nothing), no secret in argv."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets as pysecrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.netns import DataplaneError, Result, SubprocessRunner, check, in_namespace, move_target, namespace_path
from agent.tunnel_ports import PEER_KEY, TunnelPorts, TunnelPortSpec
from agent.wireguard import (
    WIREGUARD_GO_ENV,
    PeerChange,
    PeerSpec,
    PeerState,
    WireGuard,
    parse_dump,
    peer_changes,
    psk_digest,
    wireguard_go_pids,
)
from crypto import wgkeys

AGENT_NS = "agent"  # the namespace the runner runs in (the tunnel endpoint's)
BRIDGE_NS = "/run/netns/fake-bridge"


def b64(key: bytes) -> str:
    return wgkeys.encode(key)


def new_public_key() -> str:
    return b64(wgkeys.public_key(wgkeys.generate_private_key()))


class FakeHost:
    """Just enough of ip, wg, wireguard-go and ovs-vsctl to reconcile against, with namespaces.
    Records every call (argv, stdin) so tests can look for secrets in them."""

    def __init__(self) -> None:
        self.links: dict[str, dict[str, dict]] = {AGENT_NS: {"lo": self._link("loopback")}, BRIDGE_NS: {}}
        self.routes: dict[str, set[tuple]] = {AGENT_NS: set(), BRIDGE_NS: set()}
        self.wg: dict[str, dict] = {}  # by interface name (the socket is machine-wide)
        self.bridges: dict[str, dict[str, dict]] = {"br0": {}}  # bridge -> port -> external_ids
        self.calls: list[tuple[list[str], bytes | None, dict | None]] = []
        self.fail: dict[tuple[str, ...], str] = {}  # argv prefix -> stderr of a failure

    @staticmethod
    def _link(kind: str, mtu: int = 1500, **extra) -> dict:
        return {"kind": kind, "mtu": mtu, "up": kind == "loopback", "addrs": [], **extra}

    # -- the runner ---------------------------------------------------------------------------------
    def __call__(self, argv, *, input=None, env=None, timeout=15.0) -> Result:
        argv = list(argv)
        self.calls.append((argv, input, dict(env) if env else None))
        ns = AGENT_NS
        if argv[0] == "nsenter":
            ns = argv[1].removeprefix("--net=")
            argv = argv[3:]
        for prefix, stderr in self.fail.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return Result(1, "", stderr)
        handler = {"ip": self._ip, "wg": self._wg, "setsid": self._setsid, "ovs-vsctl": self._vsctl}[argv[0]]
        return handler(ns, argv[1:], input, env)

    @staticmethod
    def ok(stdout: str = "") -> Result:
        return Result(0, stdout, "")

    @staticmethod
    def err(stderr: str, rc: int = 1) -> Result:
        return Result(rc, "", stderr)

    # -- ip -----------------------------------------------------------------------------------------
    def _ip(self, ns, args, input, env) -> Result:
        links = self.links[ns]
        if args[:3] == ["link", "show", "dev"]:
            return self.ok(args[3]) if args[3] in links else self.err(f'Device "{args[3]}" does not exist.')
        if args[:3] == ["link", "del", "dev"]:
            if args[3] not in links:
                return self.err(f'Cannot find device "{args[3]}"', 2)
            del links[args[3]]
            return self.ok()
        if args[:3] == ["link", "add", "dev"] and args[4:] == ["type", "wireguard"]:
            # No kernel WireGuard on this fake host (as on these machines): wireguard-go it is.
            return self.err("Error: Unknown device type.", 2)
        if args[:2] == ["link", "add"]:
            name, opts = args[2], dict(zip(args[5:-1:2], args[6:-1:2], strict=False))
            assert args[3:5] == ["type", "vxlan"] and args[-1] == "nolearning"
            if name in links:
                return self.err("RTNETLINK answers: File exists", 2)
            for space in self.links.values():
                for link in space.values():
                    vx = link.get("vxlan")
                    if vx and vx["id"] == int(opts["id"]) and link["origin"] == ns:
                        return self.err("Error: A VXLAN device with the specified VNI already exists.", 2)
            vxlan = {"id": int(opts["id"]), "local": opts["local"], "remote": opts["remote"], "port": int(opts["dstport"])}
            links[name] = self._link("vxlan", vxlan={**vxlan, "learning": False}, origin=ns)
            return self.ok()
        if args[:3] == ["link", "set", "dev"]:
            name, what = args[3], args[4:]
            if name not in links:
                return self.err(f'Cannot find device "{name}"')
            if what == ["up"]:
                links[name]["up"] = True
            elif what[0] == "mtu":
                links[name]["mtu"] = int(what[1])
            elif what[0] == "addrgenmode":
                links[name]["addrgenmode"] = what[1]
            elif what[0] == "netns":
                self.links[namespace_path(what[1])][name] = links.pop(name)
            else:
                raise AssertionError(f"unexpected ip link set {what}")
            return self.ok()
        if args == ["-j", "addr", "show"]:
            out = []
            for name, link in links.items():
                info = [{"family": "inet", "local": a, "prefixlen": p, "scope": "global"} for a, p in link["addrs"]]
                out.append({"ifname": name, "mtu": link["mtu"], "flags": ["UP"] if link["up"] else [], "addr_info": info})
            return self.ok(json.dumps(out))
        if args in (["-d", "-j", "link", "show"], ["-s", "-j", "link", "show"]):
            out = []
            for name, link in links.items():
                entry = {"ifname": name, "mtu": link["mtu"], "flags": ["BROADCAST", "UP"] if link["up"] else ["BROADCAST"]}
                if args[0] == "-d" and "vxlan" in link:
                    entry["linkinfo"] = {"info_kind": "vxlan", "info_data": link["vxlan"]}
                if args[0] == "-s":
                    entry["stats64"] = {"rx": {"packets": 7, "dropped": 0}, "tx": {"packets": 9, "dropped": 1, "errors": 2}}
                out.append(entry)
            return self.ok(json.dumps(out))
        if args[:2] == ["addr", "replace"] or args[:2] == ["addr", "del"]:
            interface = ipaddress.ip_interface(args[2])
            address = (str(interface.ip), interface.network.prefixlen)
            addrs = links[args[4]]["addrs"]
            if args[1] == "del":
                addrs.remove(address)
            elif address not in addrs:
                addrs.append(address)
            return self.ok()
        if args[:3] == ["route", "replace", "blackhole"]:
            self.routes[ns].add(("blackhole", args[3], int(args[5])))
            return self.ok()
        raise AssertionError(f"unexpected ip {args}")

    # -- wireguard-go and wg ----------------------------------------------------------------------
    def _setsid(self, ns, args, input, env) -> Result:
        assert args[0] == "wireguard-go" and env == WIREGUARD_GO_ENV
        name = args[1]
        if name in self.wg:
            return self.err("UAPI listen error: address already in use")
        self.links[ns][name] = self._link("tun", mtu=1420)
        self.wg[name] = {"ns": ns, "private": None, "port": 40000 + len(self.wg), "peers": {}}
        return self.ok()

    def _wg(self, ns, args, input, env) -> Result:
        name = args[1]
        device = self.wg.get(name)
        if device is None or name not in self.links[device["ns"]]:
            return self.err(f"Unable to access interface: No such device ({name})")
        if args[0] == "show":
            if args[2] == "listen-port":
                return self.ok(f"{device['port']}\n")
            public = b64(wgkeys.public_key(device["private"])) if device["private"] else "(none)"
            if args[2] == "public-key":
                return self.ok(public + "\n")
            assert args[2] == "dump"
            private = b64(device["private"]) if device["private"] else "(none)"
            lines = [f"{private}\t{public}\t{device['port']}\toff"]
            for key, peer in device["peers"].items():
                psk = b64(peer["psk"]) if peer["psk"] else "(none)"
                allowed = ",".join(peer["allowed"]) or "(none)"
                lines.append(f"{key}\t{psk}\t{peer['endpoint'] or '(none)'}\t{allowed}\t1700000000\t1234\t5678\toff")
            return self.ok("\n".join(lines) + "\n")
        assert args[0] == "set"
        rest = args[2:]
        while rest:
            if rest[0] == "private-key":
                assert rest[1] == "/dev/stdin"
                device["private"] = wgkeys.decode(input.decode().strip())
                rest = rest[2:]
            elif rest[0] == "listen-port":
                device["port"] = int(rest[1])
                rest = rest[2:]
            elif rest[0] == "peer":
                key, rest = rest[1], rest[2:]
                if rest[:1] == ["remove"]:
                    device["peers"].pop(key, None)
                    return self.ok()
                peer = device["peers"].setdefault(key, {"psk": None, "endpoint": "", "allowed": []})
                while rest:
                    option, value, rest = rest[0], rest[1], rest[2:]
                    if option == "preshared-key":
                        assert value == "/dev/stdin"
                        peer["psk"] = wgkeys.decode(input.decode().strip())
                    elif option == "endpoint":
                        peer["endpoint"] = value
                    elif option == "allowed-ips":
                        wanted = [a for a in value.split(",") if a]
                        for other in device["peers"].values():  # WireGuard: an allowed IP has one owner
                            other["allowed"] = [a for a in other["allowed"] if a not in wanted]
                        peer["allowed"] = wanted
                    else:
                        raise AssertionError(f"unexpected wg set peer option {option}")
            else:
                raise AssertionError(f"unexpected wg set {rest}")
        return self.ok()

    # -- ovs-vsctl ----------------------------------------------------------------------------------
    def _vsctl(self, ns, args, input, env) -> Result:
        assert args[0].startswith("--timeout=")
        args = args[1:]
        if args[0] == "list-ports":
            return self.ok("".join(f"{p}\n" for p in sorted(self.bridges[args[1]])))
        if args[0] == "--format=json":
            assert args[1:4] == ["--columns=name,external_ids", "find", "Interface"]
            key = args[4].split(":", 1)[1].removesuffix('!=""')
            rows = [
                [port, ["map", sorted(ids.items())]]
                for ports in self.bridges.values()
                for port, ids in ports.items()
                if key in ids
            ]
            return self.ok(json.dumps({"data": rows, "headings": ["name", "external_ids"]}))
        if args[:2] == ["--if-exists", "del-port"]:
            self.bridges[args[2]].pop(args[3], None)
            return self.ok()
        if args[:2] == ["--may-exist", "add-port"]:
            bridge, port = args[2], args[3]
            assert args[4:8] == ["--", "set", "Interface", port]
            key, value = args[8].removeprefix("external_ids:").split("=", 1)
            self.bridges[bridge].setdefault(port, {})[key] = json.loads(value)
            return self.ok()
        raise AssertionError(f"unexpected ovs-vsctl {args}")

    # -- what tests look at -------------------------------------------------------------------------
    def argv_text(self) -> str:
        return "\n".join(" ".join(argv) for argv, _, _ in self.calls)

    def changing_calls(self) -> list[list[str]]:
        reads = (["ip", "link", "show"], ["ip", "-j"], ["ip", "-d"], ["ip", "-s"], ["wg", "show"])
        out = []
        for argv, _, _ in self.calls:
            plain = argv[3:] if argv[0] == "nsenter" else argv
            if (
                any(plain[: len(r)] == r for r in reads)
                or plain[0] == "ovs-vsctl"
                and plain[2] in ("list-ports", "--format=json")
            ):
                continue
            out.append(plain)
        return out


def secret_spellings(*keys: bytes) -> list[str]:
    """Every way a key could leak in text: base64, hex and its full SHA-256 digest is not one (that is what we keep)."""
    return [s for key in keys for s in (b64(key), key.hex(), base64.b64encode(key).decode()[:20])]


# -- parse_dump ------------------------------------------------------------------------------------


def realistic_dump(private: bytes, peers: list[tuple[str, bytes | None, str, str]]) -> str:
    """`wg show glwg0 dump` as wireguard-go prints it: interface line, then one line per peer."""
    public = b64(wgkeys.public_key(private))
    lines = [f"{b64(private)}\t{public}\t51820\toff"]
    for number, (key, psk, endpoint, allowed) in enumerate(peers):
        handshake = 0 if endpoint == "(none)" else 1764493000 + number
        lines.append(
            f"{key}\t{b64(psk) if psk else '(none)'}\t{endpoint}\t{allowed}\t{handshake}\t{92 * number}\t{148 * number}\toff"
        )
    return "\n".join(lines) + "\n"


def test_parse_dump_keeps_public_facts_and_only_a_digest_of_the_psk():
    private, psk = wgkeys.generate_private_key(), wgkeys.generate_psk()
    a, b, c = new_public_key(), new_public_key(), new_public_key()
    text = realistic_dump(
        private,
        [
            (a, psk, "172.31.0.2:51820", "100.127.0.2/32"),
            (b, None, "(none)", "(none)"),
            (c, psk, "[fd00::7]:51820", "100.127.0.9/32,10.1.0.0/24"),
        ],
    )
    own, peers = parse_dump(text)
    assert own == b64(wgkeys.public_key(private))
    assert set(peers) == {a, b, c}
    assert peers[a] == PeerState(a, hashlib.sha256(psk).hexdigest(), "172.31.0.2:51820", ("100.127.0.2/32",), 1764493000.0, 0, 0)
    assert peers[b].psk_digest == "" and peers[b].endpoint == "" and peers[b].allowed_ips == () and peers[b].latest_handshake == 0
    assert peers[c].allowed_ips == ("100.127.0.9/32", "10.1.0.0/24") and peers[c].rx_bytes == 184 and peers[c].tx_bytes == 296
    kept = repr((own, peers))
    for spelling in secret_spellings(private, psk):
        assert spelling not in kept


def test_parse_dump_of_an_interface_without_key_or_peers():
    assert parse_dump("(none)\t(none)\t44139\toff\n") == ("", {})


@pytest.mark.parametrize("damage", ["drop_field", "bad_counter", "bad_psk"])
def test_parse_dump_errors_never_quote_the_line(damage):
    private, psk = wgkeys.generate_private_key(), wgkeys.generate_psk()
    text = realistic_dump(private, [(new_public_key(), psk, "172.31.0.2:51820", "100.127.0.2/32")])
    head, line = text.splitlines()
    fields = line.split("\t")
    if damage == "drop_field":
        fields.pop(2)
    elif damage == "bad_counter":
        fields[5] = "x" + b64(psk)
    else:
        fields[1] = b64(psk)[:-3] + "!!="
    with pytest.raises(ValueError) as caught:
        parse_dump(head + "\n" + "\t".join(fields) + "\n")
    assert "line 2" in str(caught.value)
    for spelling in secret_spellings(private, psk):
        assert spelling not in str(caught.value)


# -- peer_changes ----------------------------------------------------------------------------------


def state_of(spec: PeerSpec, **overrides) -> PeerState:
    fields = dict(
        public_key=spec.public_key,
        psk_digest=psk_digest(spec.psk),
        endpoint=spec.endpoint,
        allowed_ips=(spec.allowed_ip,) if spec.allowed_ip else (),
        latest_handshake=0.0,
        rx_bytes=0,
        tx_bytes=0,
    )
    return PeerState(**{**fields, **overrides})


def spec(ip: str = "100.127.0.3", endpoint: str = "172.31.0.3:51820") -> PeerSpec:
    return PeerSpec(new_public_key(), wgkeys.generate_psk(), endpoint, f"{ip}/32")


def test_peer_changes_removes_first_then_adds_and_updates_with_reasons():
    same, psk_changed, moved, readdressed, new = (
        spec("100.127.0.1"),
        spec("100.127.0.2"),
        spec("100.127.0.3"),
        spec("100.127.0.4"),
        spec("100.127.0.5"),
    )
    gone = new_public_key()
    actual = {
        same.public_key: state_of(same),
        psk_changed.public_key: state_of(psk_changed, psk_digest=psk_digest(b"\x01" * 32)),
        moved.public_key: state_of(moved, endpoint="172.31.0.99:51820"),
        readdressed.public_key: state_of(readdressed, allowed_ips=("100.127.0.44/32", "100.127.0.4/32")),
        gone: state_of(spec("100.127.0.6"), public_key=gone),
    }
    desired = {s.public_key: s for s in (same, psk_changed, moved, readdressed, new)}
    changes = peer_changes(actual, desired)
    assert changes[0] == PeerChange("remove", gone)
    by_key = {c.public_key: c for c in changes[1:]}
    assert set(by_key) == {psk_changed.public_key, moved.public_key, readdressed.public_key, new.public_key}
    assert by_key[new.public_key].action == "add"
    assert by_key[psk_changed.public_key].reasons == ("psk",)
    assert by_key[moved.public_key].reasons == ("endpoint",)
    assert by_key[readdressed.public_key].reasons == ("allowed-ips",)
    assert [c.public_key for c in changes[1:]] == sorted(by_key)


def test_peer_changes_sees_equal_spellings_as_equal():
    six = PeerSpec(new_public_key(), wgkeys.generate_psk(), "[fd00:0::7]:51820", "100.127.0.3")
    roaming = PeerSpec(new_public_key(), wgkeys.generate_psk(), "", "100.127.0.4/32")
    actual = {
        six.public_key: state_of(six, endpoint="[fd00::7]:51820", allowed_ips=("100.127.0.3/32",)),
        roaming.public_key: state_of(roaming, endpoint="203.0.113.9:40000"),
    }
    assert peer_changes(actual, {p.public_key: p for p in (six, roaming)}) == []


def test_peer_changes_refuses_two_peers_claiming_one_allowed_ip():
    a, b = spec("100.127.0.3"), spec("100.127.0.3")
    with pytest.raises(ValueError, match="both claim allowed IP 100.127.0.3/32"):
        peer_changes({}, {a.public_key: a, b.public_key: b})


def test_peer_secrets_stay_out_of_repr_and_change_lines():
    peer = spec()
    text = repr(peer) + str(PeerChange("add", peer.public_key, peer)) + repr(PeerChange("add", peer.public_key, peer))
    for spelling in secret_spellings(peer.psk) + [repr(peer.psk)]:
        assert spelling not in text
    assert wgkeys.fingerprint(peer.psk) in str(PeerChange("add", peer.public_key, peer))


def test_peer_spec_checks_its_fields_without_echoing_the_psk():
    with pytest.raises(ValueError, match="psk must be 32 bytes"):
        PeerSpec(new_public_key(), b"short", "1.2.3.4:51820", "100.127.0.3/32")
    with pytest.raises(ValueError, match="not a WireGuard public key"):
        PeerSpec("nope", wgkeys.generate_psk(), "1.2.3.4:51820", "100.127.0.3/32")
    with pytest.raises(ValueError, match="not ip:port"):
        PeerSpec(new_public_key(), wgkeys.generate_psk(), "1.2.3.4", "100.127.0.3/32")


# -- WireGuard against the fake host ---------------------------------------------------------------


def test_ensure_up_starts_wireguard_go_and_lays_out_fail_closed():
    host, private = FakeHost(), wgkeys.generate_private_key()
    wg = WireGuard("glwg7", run=host)
    assert not wg.running()
    assert wg.ensure_up(private, "100.127.0.5/16") is True
    link = host.links[AGENT_NS]["glwg7"]
    assert link["addrs"] == [("100.127.0.5", 16)] and link["mtu"] == 8920 and link["up"]
    assert host.routes[AGENT_NS] == {("blackhole", "100.127.0.0/16", 4000)}
    assert host.wg["glwg7"]["port"] == 51820 and host.wg["glwg7"]["private"] == private
    assert wg.public_key() == b64(wgkeys.public_key(private))
    start = [argv for argv, _, env in host.calls if "wireguard-go" in argv]
    assert start == [["setsid", "wireguard-go", "glwg7"]]
    for spelling in secret_spellings(private):
        assert spelling not in host.argv_text()

    # Nothing to do the second time: no restart, no key, no address change.
    host.calls.clear()
    assert wg.ensure_up(private, "100.127.0.5/16") is False
    assert host.changing_calls() == [["ip", "route", "replace", "blackhole", "100.127.0.0/16", "metric", "4000"]]


def test_ensure_up_recreates_after_wireguard_go_died_and_moves_the_address():
    host, private = FakeHost(), wgkeys.generate_private_key()
    wg = WireGuard("glwg7", run=host)
    wg.ensure_up(private, "100.127.0.5/16")
    del host.links[AGENT_NS]["glwg7"]  # wireguard-go died: its TUN went with it
    del host.wg["glwg7"]
    assert not wg.running()
    assert wg.ensure_up(private, "100.127.0.5/16") is True
    assert host.links[AGENT_NS]["glwg7"]["addrs"] == [("100.127.0.5", 16)]
    assert wg.ensure_up(private, "100.127.0.6/16") is False
    assert host.links[AGENT_NS]["glwg7"]["addrs"] == [("100.127.0.6", 16)]


def test_ensure_up_refuses_a_tunnel_address_that_lives_elsewhere_too():
    host = FakeHost()
    host.links[AGENT_NS]["lo"]["addrs"].append(("100.127.0.5", 32))
    with pytest.raises(DataplaneError, match="also on lo.*fail-closed"):
        WireGuard("glwg7", run=host).ensure_up(wgkeys.generate_private_key(), "100.127.0.5/16")


def test_ensure_up_refuses_bad_input_as_a_dataplane_error():
    wg = WireGuard("glwg7", run=FakeHost())
    with pytest.raises(DataplaneError, match="does not appear to be an IPv4 or IPv6 interface"):
        wg.ensure_up(wgkeys.generate_private_key(), "100.127.0.500/16")
    with pytest.raises(DataplaneError, match="private key must be 32 bytes"):
        wg.ensure_up(b"\x01" * 31, "100.127.0.5/16")


def test_apply_peers_passes_psks_on_stdin_only_and_settles():
    host, private = FakeHost(), wgkeys.generate_private_key()
    wg = WireGuard("glwg7", run=host)
    wg.ensure_up(private, "100.127.0.5/16")
    peers = [spec("100.127.0.3", "172.31.0.3:51820"), spec("100.127.0.4", "172.31.0.4:51820")]
    desired = {p.public_key: p for p in peers}
    lines = wg.apply_peers(desired)
    assert sorted(line.split()[0] for line in lines) == ["add", "add"]
    assert {k: (v["endpoint"], v["allowed"], v["psk"]) for k, v in host.wg["glwg7"]["peers"].items()} == {
        p.public_key: (p.endpoint, [p.allowed_ip], p.psk) for p in peers
    }
    assert wg.apply_peers(desired) == []
    stdin = [stdin for argv, stdin, _ in host.calls if "preshared-key" in argv]
    assert sorted(stdin) == sorted(f"{b64(p.psk)}\n".encode() for p in peers)

    rotated = PeerSpec(peers[0].public_key, wgkeys.generate_psk(), peers[0].endpoint, peers[0].allowed_ip)
    lines = wg.apply_peers({rotated.public_key: rotated})
    assert [line.split()[0] for line in lines] == ["remove", "update"] and "(psk)" in lines[1]
    secrets_seen = secret_spellings(private, rotated.psk, *(p.psk for p in peers))
    for spelling in secrets_seen:
        assert spelling not in host.argv_text()
        assert spelling not in "\n".join(lines)


def test_a_failing_command_names_its_purpose_and_stderr_but_no_key():
    host = FakeHost()
    wg = WireGuard("glwg7", run=host)
    wg.ensure_up(wgkeys.generate_private_key(), "100.127.0.5/16")
    peer = spec()
    host.fail[("wg", "set", "glwg7", "peer")] = "Unable to modify interface: Protocol not supported"
    with pytest.raises(DataplaneError) as caught:
        wg.apply_peers({peer.public_key: peer})
    message = str(caught.value)
    assert "glwg7: add peer" in message and "Protocol not supported" in message
    for spelling in secret_spellings(peer.psk):
        assert spelling not in message


def test_wireguard_go_pids_finds_the_daemon_and_skips_zombies_and_other_interfaces(tmp_path):
    def process(pid: int, argv: list[str], env: list[str]) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (tmp_path / str(pid) / "environ").write_bytes(b"".join(e.encode() + b"\0" for e in env))

    process(10, ["wireguard-go", "glwg7"], [])  # the parent, while it starts the daemon
    process(11, ["/usr/bin/wireguard-go", "glwg7"], ["WG_PROCESS_FOREGROUND=1"])
    process(12, [], [])  # a zombie
    process(13, ["wireguard-go", "glwg70"], ["WG_PROCESS_FOREGROUND=1"])
    process(14, ["sleep", "glwg7"], [])
    (tmp_path / "self").mkdir()
    assert wireguard_go_pids("glwg7", proc=str(tmp_path)) == [11, 10]


# -- the runner --------------------------------------------------------------------------------------


def test_namespace_arguments():
    assert move_target("/proc/1/ns/net") == "1"
    assert move_target("/run/netns/glt-epa") == "glt-epa" and move_target("/var/run/netns/x") == "x"
    assert move_target("4242") == "4242"
    with pytest.raises(ValueError, match="/proc/PID/ns/net"):
        move_target("/tmp/some/ns")
    assert namespace_path("1") == "/proc/1/ns/net" and namespace_path("x") == "/run/netns/x"
    assert in_namespace(None, ["ip", "link"]) == ["ip", "link"]
    assert in_namespace("/proc/1/ns/net", ["ip", "link"]) == ["nsenter", "--net=/proc/1/ns/net", "--", "ip", "link"]


def test_subprocess_runner_bounds_time_and_reports_missing_programs():
    run = SubprocessRunner()
    assert run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"in\n") == Result(3, "in\n", "oops\n")
    assert run(["sleep", "5"], timeout=0.2).returncode == 124
    assert run(["/nonexistent/tool"]).returncode == 127
    with pytest.raises(DataplaneError, match=r"read things failed: `sh -c exit 2` exited 2: \(no error output\)"):
        check(run, "read things", ["sh", "-c", "exit 2"])


# -- TunnelPorts against the fake host -------------------------------------------------------------


def port(name: str, vni: int, remote: str = "100.127.0.2", peer: str = "hv2") -> TunnelPortSpec:
    return TunnelPortSpec(name, vni, "100.127.0.1", remote, peer)


def test_tunnel_ports_are_made_in_the_endpoint_namespace_and_moved_to_the_bridge():
    host = FakeHost()
    ports = TunnelPorts("br0", bridge_netns=BRIDGE_NS, run=host)
    desired = {"glvx1x2": port("glvx1x2", 12), "glvx1x3": port("glvx1x3", 13, "100.127.0.3", "hv3")}
    lines = ports.apply(desired)
    assert lines == [
        "add tunnel port glvx1x2 (peer hv2): vni 12 local 100.127.0.1 remote 100.127.0.2",
        "add tunnel port glvx1x3 (peer hv3): vni 13 local 100.127.0.1 remote 100.127.0.3",
    ]
    assert "glvx1x2" not in host.links[AGENT_NS]
    moved = host.links[BRIDGE_NS]["glvx1x2"]
    assert moved["origin"] == AGENT_NS and moved["up"] and moved["mtu"] == 1500 and moved["addrgenmode"] == "none"
    assert host.bridges["br0"] == {"glvx1x2": {PEER_KEY: "hv2"}, "glvx1x3": {PEER_KEY: "hv3"}}
    create = [argv for argv, _, _ in host.calls if "add" in argv and "vxlan" in argv]
    assert (
        create[0] == "ip link add glvx1x2 type vxlan id 12 local 100.127.0.1 remote 100.127.0.2 dstport 4789 nolearning".split()
    )
    assert ["ip", "link", "set", "dev", "glvx1x2", "netns", "fake-bridge"] in [argv for argv, _, _ in host.calls]
    assert ["nsenter", f"--net={BRIDGE_NS}", "--", "ip", "link", "set", "dev", "glvx1x2", "up"] in [a for a, _, _ in host.calls]

    assert ports.actual() == desired
    host.calls.clear()
    assert ports.apply(desired) == []
    assert host.changing_calls() == []
    assert ports.port_stats() == {name: {"tx_dropped": 1, "tx_errors": 2, "tx_packets": 9, "rx_packets": 7} for name in desired}


def test_tunnel_ports_without_a_bridge_namespace_stay_where_made():
    host = FakeHost()
    ports = TunnelPorts("br0", run=host)
    ports.apply({"glvx1x2": port("glvx1x2", 12)})
    assert "glvx1x2" in host.links[AGENT_NS]
    assert not any(argv[0] == "nsenter" or "netns" in argv for argv, _, _ in host.calls)


def test_tunnel_ports_replace_changed_remove_unwanted_and_swap_vnis():
    host = FakeHost()
    ports = TunnelPorts("br0", bridge_netns=BRIDGE_NS, run=host)
    host.bridges["br0"]["vm1"] = {"vm-id": "web1"}  # not ours: never touched
    ports.apply(
        {"glvx1x2": port("glvx1x2", 12), "glvx1x3": port("glvx1x3", 13, "100.127.0.3", "hv3"), "glvx1x4": port("glvx1x4", 14)}
    )
    # VNIs swap between two ports: both must go before either comes back.
    desired = {"glvx1x2": port("glvx1x2", 13), "glvx1x3": port("glvx1x3", 12, "100.127.0.3", "hv3")}
    lines = ports.apply(desired)
    assert lines == [
        "remove tunnel port glvx1x4 (peer hv2): vni 14 local 100.127.0.1 remote 100.127.0.2",
        "replace tunnel port glvx1x2 (peer hv2): vni 13 local 100.127.0.1 remote 100.127.0.2",
        "replace tunnel port glvx1x3 (peer hv3): vni 12 local 100.127.0.1 remote 100.127.0.3",
    ]
    assert ports.actual() == desired and "glvx1x4" not in host.links[BRIDGE_NS]
    assert host.bridges["br0"]["vm1"] == {"vm-id": "web1"}

    # Drift is repaired in place when it can be, by replacement when the device is gone.
    host.links[BRIDGE_NS]["glvx1x2"]["up"] = False
    host.links[BRIDGE_NS]["glvx1x2"]["mtu"] = 1450
    del host.links[BRIDGE_NS]["glvx1x3"]
    assert ports.actual()["glvx1x3"] == TunnelPortSpec("glvx1x3", 0, "", "", "hv3")
    assert ports.apply(desired) == [
        "set MTU 1500 on tunnel port glvx1x2",
        "bring up tunnel port glvx1x2",
        "replace tunnel port glvx1x3 (peer hv3): vni 12 local 100.127.0.1 remote 100.127.0.3",
    ]
    assert ports.apply(desired) == []

    ports.remove_all()
    assert ports.actual() == {} and set(host.bridges["br0"]) == {"vm1"}
    assert not any("vxlan" in link for link in host.links[BRIDGE_NS].values())


def test_tunnel_port_leftovers_of_a_crash_are_cleared_before_creation():
    host = FakeHost()
    ports = TunnelPorts("br0", bridge_netns=BRIDGE_NS, run=host)
    host.links[AGENT_NS]["glvx1x2"] = FakeHost._link(
        "vxlan", vxlan={"id": 99, "local": "", "remote": "", "port": 4789}, origin=AGENT_NS
    )
    assert ports.apply({"glvx1x2": port("glvx1x2", 12)})[0].startswith("add tunnel port glvx1x2")
    assert "glvx1x2" not in host.links[AGENT_NS] and host.links[BRIDGE_NS]["glvx1x2"]["vxlan"]["id"] == 12


def test_a_failed_creation_leaves_nothing_half_made():
    host = FakeHost()
    ports = TunnelPorts("br0", bridge_netns=BRIDGE_NS, run=host)
    host.fail[("ovs-vsctl", "--timeout=5", "--may-exist")] = "ovs-vsctl: no bridge named br0"
    with pytest.raises(DataplaneError, match="glvx1x2: add to br0 failed.*no bridge named br0"):
        ports.apply({"glvx1x2": port("glvx1x2", 12)})
    assert "glvx1x2" not in host.links[AGENT_NS] and "glvx1x2" not in host.links[BRIDGE_NS]


@pytest.mark.parametrize(
    "bad, message",
    [
        (port("glvx-much-too-long", 12), "interface name"),
        (port("glvx1x2", 0), "vni"),
        (TunnelPortSpec("glvx1x2", 12, "100.127.0.1/16", "100.127.0.2", "hv2"), "local_ip"),
        (port("glvx1x2", 12, peer='hv2",x'), "peer"),
    ],
)
def test_tunnel_ports_refuse_bad_specs_before_touching_anything(bad, message):
    host = FakeHost()
    with pytest.raises(DataplaneError, match=message):
        TunnelPorts("br0", run=host).apply({bad.name: bad})
    assert host.calls == []


def test_tunnel_ports_refuse_a_shared_vni():
    with pytest.raises(DataplaneError, match="share vni 12"):
        TunnelPorts("br0", run=FakeHost()).apply({"a": port("a", 12), "b": port("b", 12)})


# -- one property: whatever the start and the goal, one apply reaches the goal and the next does nothing


def peer_sets(draw_keys):
    return st.dictionaries(
        st.sampled_from(draw_keys),
        st.tuples(st.integers(1, 6), st.sampled_from(["172.31.0.2:51820", "172.31.0.3:51820", ""])),
        max_size=6,
    )


KEYS = [new_public_key() for _ in range(8)]
PSKS = [bytes([n]) * 32 for n in range(1, 7)]


def build_peers(drawn) -> dict[str, PeerSpec]:
    # Allowed IPs from the key's index: unique per key, as the controller hands them out.
    return {
        key: PeerSpec(key, PSKS[psk - 1], endpoint, f"100.127.0.{KEYS.index(key) + 2}/32")
        for key, (psk, endpoint) in drawn.items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(start=peer_sets(KEYS), goal=peer_sets(KEYS), ports_start=st.sets(st.integers(1, 6)), ports_goal=st.sets(st.integers(1, 6)))
def test_one_apply_reaches_any_goal_and_the_next_changes_nothing(start, goal, ports_start, ports_goal):
    host = FakeHost()
    wg = WireGuard("glwg7", run=host)
    wg.ensure_up(pysecrets.token_bytes(32), "100.127.0.5/16")
    wg.apply_peers(build_peers(start))
    desired = build_peers(goal)
    wg.apply_peers(desired)
    assert peer_changes(wg.peers(), desired) == []
    assert wg.apply_peers(desired) == []

    ports = TunnelPorts("br0", bridge_netns=BRIDGE_NS, run=host)
    # Names and VNIs drawn independently, so ports trade VNIs between start and goal.
    ports.apply({f"glvx{n}": port(f"glvx{n}", (n * 5) % 7 + 1) for n in ports_start})
    wanted = {f"glvx{n}": port(f"glvx{n}", (n * 3) % 7 + 1) for n in ports_goal}
    ports.apply(wanted)
    assert ports.actual() == wanted
    assert ports.apply(wanted) == []


class KernelHost:
    """A host whose kernel has the WireGuard module: `ip link add ... type wireguard` works."""

    def __init__(self, module: bool) -> None:
        self.module = module
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, input=None, env=None, timeout=15.0) -> Result:
        self.calls.append(list(argv))
        if argv[:2] == ["ip", "link"] and argv[-2:] == ["type", "wireguard"]:
            return Result(0, "", "") if self.module else Result(2, "", "Error: Unknown device type.")
        if argv[:3] == ["ip", "link", "del"]:
            return Result(1, "", 'Cannot find device "glwg7"')
        return Result(0, "", "")


def test_the_kernel_module_is_used_where_it_loads_and_wireguard_go_never_starts():
    host = KernelHost(module=True)
    wg = WireGuard("glwg7", run=host)
    wg._start()
    assert wg.kernel is True
    assert ["ip", "link", "add", "dev", "glwg7", "type", "wireguard"] in host.calls
    assert not any("wireguard-go" in argv for argv in host.calls)


def test_asking_for_the_kernel_module_where_there_is_none_is_a_clear_error():
    with pytest.raises(DataplaneError, match="no kernel WireGuard here: Error: Unknown device type"):
        WireGuard("glwg7", run=KernelHost(module=False), implementation="kernel")._start()
    with pytest.raises(ValueError, match="implementation must be one of"):
        WireGuard("glwg7", implementation="fast")
