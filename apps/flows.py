"""Flow entries as plain, hashable data: what a switch should hold, with no Ryu in sight."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from apps import pipeline

MatchValue = int | str | tuple


# Actions are named tuples: hashed, compared and built in C, as a compile makes and looks up
# hundreds of thousands of them. Their repr is the dataclass spelling the cookies were always
# derived from ("Output(port=1, max_len=65509)"), so cookies do not change.


class Output(NamedTuple):
    """Send the frame out of a port (an OpenFlow port number or reserved port)."""

    port: int
    max_len: int = 0xFFE5  # OFPCML_NO_BUFFER when the port is the controller


class SetField(NamedTuple):
    """Overwrite one header field (OXM name, Ryu spelling)."""

    name: str
    value: MatchValue


class Move(NamedTuple):
    """Copy n_bits from one header field to another (Nicira reg_move)."""

    src: str
    dst: str
    n_bits: int


class Conntrack(NamedTuple):
    """Send the frame through connection tracking in a zone. With `table`, the frame is
    re-submitted to that table with its ct_state (and ct_mark) set; with `commit`, the connection is
    remembered so that its replies are +est, and with `mark` too, the connection's ct_mark is set."""

    zone: int
    commit: bool = False
    table: int | None = None
    mark: int | None = None


class PushVlan(NamedTuple):
    """Push an 802.1Q header (its VID is then set with SetField("vlan_vid", OFPVID_PRESENT | vid))."""

    ethertype: int = 0x8100


class PopVlan(NamedTuple):
    """Pop the outermost 802.1Q header."""


Action = Output | SetField | Move | Conntrack | PushVlan | PopVlan

# The mark every frame of an encrypt connection carries through the pipeline: set by the policy
# table, by a tunnel's ingress and by remediation's allowances, read by steering (apps/steering.py).
ENCRYPT_MARK = SetField("reg0", pipeline.REG0_ENCRYPT)


class PipelineError(ValueError):
    """A flow entry breaks the pipeline description (a programming error)."""


def _freeze_match(items: Iterable[tuple[str, MatchValue]]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items))


@dataclass(frozen=True)
class FlowEntry:
    """One desired flow: table, priority, match, apply-actions and an optional goto.

    The cookie is derived from the content: the reconciler compares switches by
    cookie alone, so a changed entry is simply a different cookie.
    """

    table: int
    priority: int
    match: tuple
    actions: tuple = ()
    goto: int | None = None
    app: int = pipeline.APP_TOPOLOGY
    metadata: tuple[int, int] | None = None  # write-metadata instruction: (value, mask)
    meter: int | None = None  # meter instruction; set by make() for every entry that punts to the controller
    cookie: int = field(default=0, compare=False)
    # Where the entry goes in a batch of adds (_install_order): set with the cookie.
    install_order: int = field(default=0, init=False, compare=False, repr=False)

    @classmethod
    def make(
        cls,
        table: int,
        priority: int,
        match: dict[str, MatchValue] | None = None,
        actions: Iterable[Action] = (),
        goto: int | None = None,
        app: int = pipeline.APP_TOPOLOGY,
        metadata: tuple[int, int] | None = None,
    ) -> FlowEntry:
        if type(actions) is not tuple:
            actions = tuple(actions)
        # Field names are unique, so sorting never compares values.
        frozen = tuple(sorted(match.items() if type(match) is dict else match)) if match else ()
        try:
            return _make_entry(table, priority, frozen, actions, goto, app, metadata)
        except TypeError:  # a list value (rare, so not looked for on every entry): frozen as a tuple
            return _make_entry(table, priority, _freeze_match(frozen), actions, goto, app, metadata)

    def __post_init__(self) -> None:
        # Built directly rather than by make() (tests do, unchecked): named by its content like every entry.
        object.__setattr__(self, "cookie", self.content_cookie())
        object.__setattr__(self, "install_order", _install_order(self.table, self.priority, self.cookie))

    # Entries are hashed and compared by the hundred thousand (the reconciler's sets, the encoder's
    # cache): by their cookie, which is a digest of everything compared, then field by field.
    def __hash__(self) -> int:
        return self.cookie

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not FlowEntry:
            return NotImplemented
        return self.cookie == other.cookie and self._content() == other._content()

    def _content(self) -> tuple:
        return (self.table, self.priority, self.match, self.actions, self.goto, self.app, self.metadata, self.meter)

    def content_cookie(self) -> int:
        return _cookie(self.table, self.priority, self.match, self.actions, self.goto, self.app, self.metadata, self.meter)

    @property
    def slot(self) -> tuple:
        """Table, priority and match: a switch holds one entry per slot, and adding an entry
        to an occupied slot replaces what was there."""
        return (self.table, self.priority, self.match)

    @property
    def match_dict(self) -> dict[str, Any]:
        return dict(self.match)


@functools.lru_cache(maxsize=4096)
def _check_shape(table: int, names: tuple[str, ...], goto: int | None) -> None:
    """Entries of one shape (table, match fields, goto) are checked once."""
    spec = pipeline.PIPELINE.get(table)
    if spec is None:
        raise PipelineError(f"no table {table} in the pipeline")
    bad = set(names) - spec.match_fields
    if bad:
        raise PipelineError(f"table {spec.name} does not match on {sorted(bad)}")
    if goto is not None and goto not in spec.next_tables:
        raise PipelineError(f"table {spec.name} may not go to table {goto}")


@functools.lru_cache(maxsize=1 << 14)
def _actions_repr(actions: tuple) -> str:
    """repr(actions), computed once per distinct action list."""
    return repr(actions)


_COOKIE_MAGIC = pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT

# repr() of each (field, value) a match holds, kept while the fields recur: a data centre's
# matches are made of far fewer distinct pairs (a VM's MAC, an identity's metadata) than entries.
_ITEM_REPRS: dict[tuple, str] = {}
_ITEM_REPRS_MAX = 1 << 18


def _match_repr(match: tuple) -> str:
    """repr(match), assembled from the cached repr of each of its items."""
    get = _ITEM_REPRS.get
    parts = []
    for item in match:
        text = get(item)
        if text is None:
            if len(_ITEM_REPRS) >= _ITEM_REPRS_MAX:
                _ITEM_REPRS.clear()
            text = _ITEM_REPRS[item] = repr(item)
        parts.append(text)
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def _cookie(table, priority, match, actions, goto, app, metadata, meter) -> int:
    """Our namespace, the app, and 48 bits of the digest of
    repr((table, priority, match, actions, goto[, metadata][, ("meter", meter)])); the text is
    built from cached reprs of the actions and of the match's items, so cookies never change
    across versions (tests/unit/test_flows.py holds known values)."""
    text = f"({table!r}, {priority!r}, {_match_repr(match)}, {_actions_repr(actions)}, {goto!r}"
    if metadata is not None:
        text += f", {metadata!r}"
    if meter is not None:
        text += f", {('meter', meter)!r}"
    digest = hashlib.blake2b((text + ")").encode(), digest_size=6).digest()
    return _COOKIE_MAGIC | (app << pipeline.COOKIE_APP_SHIFT) | int.from_bytes(digest, "big")


# Sized for the largest fabrics benchmarked (about 600,000 distinct entries at 20,000 VMs): a
# recompile from scratch then finds every entry built already.
@functools.lru_cache(maxsize=1 << 20)
def _make_entry(
    table: int, priority: int, match: tuple, actions: tuple, goto: int | None, app: int, metadata: tuple[int, int] | None
) -> FlowEntry:
    """Entries are immutable, so the same content is built (validated and hashed) only once:
    a compile of a large fabric repeats most entries across switches and across compiles."""
    meter = None
    for action in actions:
        if type(action) is Output and action.port == pipeline.OFPP_CONTROLLER:
            # Every entry that punts to the controller is rate-limited on the switch, so that a VM
            # flooding frames cannot flood the controller. LLDP has a meter of its own, so that
            # such a flood cannot starve link discovery either.
            lldp = dict(match).get("eth_type") == pipeline.ETH_TYPE_LLDP
            meter = pipeline.METER_LLDP if lldp else pipeline.METER_PACKET_IN
            if app in (pipeline.APP_QUARANTINE, pipeline.APP_PORT_SECURITY):
                meter = pipeline.METER_QUARANTINE  # a quarantined VM cannot crowd out anyone's learning
            break
    _check_shape(table, tuple([name for name, _ in match]), goto)
    cookie = _cookie(table, priority, match, actions, goto, app, metadata, meter)
    # Built without the frozen dataclass's field-by-field __init__ (a compile makes hundreds of
    # thousands): the same fields, the same frozen object.
    entry = object.__new__(FlowEntry)
    object.__setattr__(
        entry,
        "__dict__",
        {
            "table": table,
            "priority": priority,
            "match": match,
            "actions": actions,
            "goto": goto,
            "app": app,
            "metadata": metadata,
            "meter": meter,
            "cookie": cookie,
            "install_order": _install_order(table, priority, cookie),
        },
    )
    return entry


def _install_order(table: int, priority: int, cookie: int) -> int:
    """One integer that sorts entries the way a switch should receive them: highest table first
    (a frame admitted upstream must find its way on), then highest priority, then cookie."""
    return ((0xFF - table) << 80) | ((0xFFFF - priority) << 64) | cookie


def is_ours(cookie: int) -> bool:
    """True when a cookie carries the Goldilocks namespace."""
    return (cookie >> pipeline.COOKIE_MAGIC_SHIFT) == pipeline.COOKIE_MAGIC


def app_of(cookie: int) -> str:
    return pipeline.APP_NAMES.get((cookie >> pipeline.COOKIE_APP_SHIFT) & 0xFF, "unknown")
