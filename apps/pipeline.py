"""The OpenFlow 1.3 pipeline: table ids, their jobs, cookie namespaces and priorities, in one place."""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Tables. Each table has one job; every flow built for a table is checked
# against its description (see FlowEntry.validate / check_entry below).
# ---------------------------------------------------------------------------
INGRESS = 0  # port security and the source identity, source learning, LLDP, quarantine and its exceptions
CLASSIFY = 1  # the destination identity, by destination MAC
POLICY = 2  # allow / deny / encrypt by source and destination identity and service, with conntrack
FORWARD = 3  # ARP responder, unicast along shortest paths, tree flooding
EGRESS = 4  # last check before a local VM port


@dataclass(frozen=True)
class TableSpec:
    """What one table is for and which match fields and gotos it may use."""

    table_id: int
    name: str
    job: str
    match_fields: frozenset[str]
    next_tables: frozenset[int]


PIPELINE: dict[int, TableSpec] = {
    t.table_id: t
    for t in (
        TableSpec(
            INGRESS,
            "ingress",
            "admit frames from edge ports only from known (port, MAC) pairs and tag them with the source identity"
            " (metadata bits 0-31); LLDP and unknown sources to the controller; tunnel endpoints' underlay traffic"
            " straight to forward; frames out of a tunnel marked encrypted and straight to egress",
            frozenset(
                {"in_port", "eth_src", "eth_dst", "eth_type", "arp_spa", "ipv4_src", "ip_proto", "udp_src", "udp_dst",
                 "tcp_src", "tcp_dst", "ct_state", "vlan_vid"}
            ),
            frozenset({CLASSIFY, FORWARD, EGRESS}),
        ),
        TableSpec(
            CLASSIFY,
            "classify",
            "tag the frame with the destination identity (metadata bits 32-63) by destination MAC",
            frozenset({"eth_dst"}),
            frozenset({POLICY}),
        ),
        TableSpec(
            POLICY,
            "policy",
            "decide allow / deny / encrypt from source and destination identity and service; conntrack lets replies back",
            frozenset(
                {"metadata", "eth_dst", "eth_type", "ip_proto", "tcp_dst", "udp_dst", "tcp_src", "udp_src", "icmpv6_type",
                 "ct_state", "ct_mark"}
            ),
            frozenset({FORWARD}),
        ),
        TableSpec(
            FORWARD,
            "forward",
            "answer ARP for known IPs, send unicast along shortest paths (or up the spanning tree),"
            " flood broadcast on the spanning tree;"
            " encrypted traffic only into the tunnel toward its destination hypervisor, or dropped",
            frozenset({"in_port", "eth_src", "eth_dst", "eth_type", "arp_op", "arp_tpa", "reg0"}),
            frozenset({EGRESS}),
        ),
        TableSpec(
            EGRESS,
            "egress",
            "deliver to a local VM port, committing IP connections so replies pass (destination quarantine lives here);"
            " connections that arrived encrypted are committed with the encrypt mark, so their replies go back encrypted",
            frozenset({"eth_dst", "eth_type", "reg0"}),
            frozenset(),
        ),
    )
}

# ---------------------------------------------------------------------------
# Cookies: 0x6c (Goldilocks) in the top byte, the owning app in the next byte,
# and a 48-bit content hash below. The reconciler only ever reads or deletes
# flows carrying our top byte, so it never touches anything else.
# ---------------------------------------------------------------------------
COOKIE_MAGIC = 0x6C
COOKIE_MAGIC_SHIFT = 56
COOKIE_APP_SHIFT = 48
COOKIE_MAGIC_MASK = 0xFF << COOKIE_MAGIC_SHIFT
COOKIE_HASH_MASK = (1 << COOKIE_APP_SHIFT) - 1

APP_TOPOLOGY = 0x01  # table-miss, LLDP, learning, forwarding, flooding, ARP
APP_POLICY = 0x02
APP_QUARANTINE = 0x03
APP_TUNNEL = 0x04
APP_PORT_SECURITY = 0x05  # evidence of spoofing: a copy under this app is never learned from

APP_NAMES = {
    APP_TOPOLOGY: "topology",
    APP_POLICY: "policy",
    APP_QUARANTINE: "quarantine",
    APP_TUNNEL: "tunnel",
    APP_PORT_SECURITY: "port-security",
}

# ---------------------------------------------------------------------------
# Priorities.
# ---------------------------------------------------------------------------
PRIO_MISS = 0
PRIO_LEARN = 100  # unknown source on an edge port -> controller
# Port security on a managed VM's port (apps/port_security.py), around the admission entries:
PRIO_SPOOF_MAC = 450  # any other MAC on the port: evidence, dropped
PRIO_SPOOF_ADDRESS_IP = 503  # the VM's MAC with an IPv4 source not its own: evidence, dropped
PRIO_OWN_ADDRESS_IP = 505  # the VM's MAC and one of its own IPv4 addresses: admitted
PRIO_SPOOF_ADDRESS_ARP = 515  # the VM's ARP with a sender address not its own: evidence, dropped
PRIO_OWN_ADDRESS_ARP = 525  # the VM's ARP with one of its own sender addresses: admitted
PRIO_FROM_FABRIC = 300  # frame from an inter-switch port
PRIO_KNOWN_SOURCE = 500  # known (port, MAC) on an edge port
PRIO_ENDPOINT = 600  # a tunnel endpoint's own ARP and WireGuard UDP, from its own port: infrastructure
PRIO_FROM_TUNNEL = 700  # a frame out of a tunnel port: encrypted, for local VMs only
PRIO_QUARANTINE = 900
# A VM in remediation (apps/remediation.py): exceptions above the quarantine group, tracked in a
# conntrack zone of their own. Mirror copies (apps/mirror.py) sit one above the entry they copy for.
PRIO_REMEDIATE_OTHERS = 945  # never to or from another quarantined VM (above every allowance)
PRIO_REMEDIATE_ALLOW = 940  # tracked frames an allow rule grants
PRIO_REMEDIATE_ALLOW_ENCRYPT = 942  # with `any` peers: the peers policy encrypts to, marked for the tunnel
PRIO_REMEDIATE_TRACK = 950  # its IPv4 frames, and IPv4 to it: into the quarantine zone first
PRIO_REMEDIATE_ARP = 960
PRIO_MIRROR_TRANSIT = 990  # a mirror copy on its way to the analyzer, from an inter-switch port
PRIO_LLDP = 1000

PRIO_FLOOD_UNKNOWN = 100  # unknown unicast destination
PRIO_FLOOD_IP_FROM_FABRIC = 110  # hypervisors: IP flooded from the fabric is committed before delivery
PRIO_FLOOD = 300  # broadcast / multicast along the tree
PRIO_ARP_UNANSWERED = 150  # an ARP request from an edge port that no responder answered
PRIO_UNICAST = 500
PRIO_UNICAST_UPLINK = 400  # unicast with no route: to the parent; at the root, flooded (forwarding.root_flood_flows)
PRIO_UNKNOWN_IP_AT_ROOT = 410  # the same for IP at a root with local VMs: committed first
PRIO_REFLECTED = 450  # a local host's unicast flooded back down by the root: on down the tree, not to local VMs
PRIO_ARP_RESPONDER = 900
PRIO_ARP_OWNER = 910  # a host's ARP for its own address bypasses the responder
PRIO_ARP_FROM_FABRIC = 920  # ARP requests flooded by another switch bypass it too
# Encrypted traffic (reg0 = REG0_ENCRYPT) in the forward table: a local VM, else the tunnel toward the
# destination's hypervisor, else dropped. Above every plain unicast entry, so it can never leave in clear.
PRIO_ENCRYPT_LOCAL = 620
PRIO_ENCRYPT_TUNNEL = 610
PRIO_ENCRYPT_DROP = 600
PRIO_PASS = 1

# Policy table.
PRIO_POLICY_BYPASS = 65000  # broadcast/multicast, ARP, IPv6 neighbour discovery: not policed
PRIO_CT_TRACK = 62000  # untracked IP -> conntrack, then back to this table
PRIO_CT_ESTABLISHED_ENCRYPT = 61010  # established connections with the encrypt mark stay encrypted
PRIO_CT_ESTABLISHED = 61000  # replies and established connections pass
PRIO_CT_INVALID = 60900
PRIO_RULE_TOP = 30000  # rule i gets PRIO_RULE_TOP - i: first match wins
MAX_RULES = 20000
PRIO_DEFAULT_ESTABLISHED = 25  # with encrypt rules: an established connection no encrypt rule re-marked
PRIO_DEFAULT_NEW_IP = 20  # a new IP connection no rule matched
PRIO_DEFAULT_OTHER = 10  # other unicast (not IP): the default action, no conntrack

# Egress table.
PRIO_EGRESS_COMMIT = 510
PRIO_EGRESS_COMMIT_ENCRYPT = 520  # arrived through a tunnel: committed with the encrypt mark

# conntrack state bits (ct_state)
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ETH_TYPE_IPV6_ND_TYPES = (133, 134, 135, 136, 137)

# Encryption. Policy marks an encrypt connection's frames with reg0 = REG0_ENCRYPT for the rest of
# the pipeline, and commits the connection with ct_mark = CT_MARK_ENCRYPT so that every later frame
# of it, replies included, is marked again. Frames out of a tunnel port get the same register.
REG0_ENCRYPT = 1
CT_MARK_ENCRYPT = 1
# The conntrack zone of VMs in remediation: their connections from before the quarantine are unknown
# there, so they are cut. Hypervisor zones (policy_flows.conntrack_zone) never take this one.
QUARANTINE_CT_ZONE = 0xFFFF
# Tunnel ports are the VXLAN-over-WireGuard ports the agents add to hypervisor bridges, named
# TUNNEL_PORT_PREFIX + "<own index>x<peer index>". A port so named is a tunnel port at once: never
# probed, never learned from, never flooded to, never an edge or inter-switch port.
TUNNEL_PORT_PREFIX = "glvx"

# Metadata: source identity in the low 32 bits, destination identity in the high 32 bits.
META_SRC_MASK = 0xFFFFFFFF
META_DST_SHIFT = 32
META_DST_MASK = 0xFFFFFFFF << 32

# Ethernet types and special addresses.
ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_LLDP = 0x88CC
ETH_TYPE_IPV6 = 0x86DD
MULTICAST_BIT = ("01:00:00:00:00:00", "01:00:00:00:00:00")

# OpenFlow reserved ports (OF 1.3 numbers) used in plain data.
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9  # packet-out only: run the frame through the pipeline from table 0
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_MAX = 0xFFFFFF00

# Meters on the packet-in path (per switch), in packets per second with a burst allowance.
METER_PACKET_IN = 1  # unknown sources, ARP copies, unanswered ARP
METER_LLDP = 2
METER_QUARANTINE = 3  # copies of a quarantined VM's frames and spoofing evidence: enough to act on, never a flood
METERS = {METER_PACKET_IN: (500, 250), METER_LLDP: (200, 200), METER_QUARANTINE: (20, 20)}  # id -> (rate pps, burst)

# How many bytes of a packet-in we need (headers only).
PACKET_IN_BYTES = 128
