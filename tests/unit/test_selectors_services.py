"""Label selectors and services: parsing, matching and the OpenFlow port masks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.selectors import SelectorError, parse_selector
from apps.services import Service, ServiceError, parse_service, port_range_masks

DB = {"tier": "db", "tenant": "blue", "sensitivity": "pci"}
WEB = {"tier": "web", "tenant": "blue"}


@pytest.mark.parametrize(
    "text, db, web",
    [
        ("tier=db", True, False),
        ("tier==db", True, False),
        ("tier!=web", True, False),
        ("tier in (db,cache)", True, False),
        ("tier in (db, cache)", True, False),
        ("tier notin (web)", True, False),
        ("sensitivity", True, False),
        ("!sensitivity", False, True),
        ("tenant=blue,tier=web", False, True),
        ("tenant=blue,!quarantined", True, True),
        ("tenant in (blue),tier notin (db,cache)", False, True),
        ("any", True, True),
        ("owner!=bob", True, True),  # != matches objects without the key, as in Kubernetes
    ],
)
def test_selector_matching(text, db, web):
    selector = parse_selector(text)
    assert selector.matches(DB) is db
    assert selector.matches(WEB) is web


def test_unmanaged_hosts_are_selected_only_by_unmanaged_and_any():
    assert parse_selector("unmanaged").matches(None)
    assert not parse_selector("unmanaged").matches(DB)
    assert parse_selector("any").matches(None)
    assert not parse_selector("!quarantined").matches(None)
    assert not parse_selector("tier!=db").matches(None)


def test_equivalent_selectors_compare_equal_and_print_canonically():
    a = parse_selector("tier in (cache,db), tenant=blue")
    b = parse_selector("tenant==blue,tier in (db,cache)")
    assert a == b
    assert str(a) == "tenant=blue,tier in (cache,db)"
    assert parse_selector(str(a)) == a


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty selector"),
        ("tier=db,", "empty clause"),
        ("tier in (db", "unbalanced"),
        ("tier in ()", "empty value list"),
        ("tier=d b", "invalid label value"),
        ("ti er=db", "invalid label key"),
        ("tier in db", "cannot parse"),
        ("any,tier=db", "stand alone"),
        ("-bad=1", "invalid label key"),
    ],
)
def test_bad_selectors_name_the_problem(text, fragment):
    with pytest.raises(SelectorError, match=fragment):
        parse_selector(text)


def test_a_selector_must_be_a_string():
    with pytest.raises(SelectorError, match="must be a string"):
        parse_selector(["tier=db"])


_names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(st.dictionaries(_names, _names, max_size=4), _names, st.lists(_names, min_size=1, max_size=3))
def test_in_and_notin_are_complements(labels, key, values):
    inside = parse_selector(f"{key} in ({','.join(values)})")
    outside = parse_selector(f"{key} notin ({','.join(values)})")
    assert inside.matches(labels) != outside.matches(labels)


@given(st.dictionaries(_names, _names, max_size=4), _names)
def test_exists_and_not_exists_are_complements(labels, key):
    assert parse_selector(key).matches(labels) != parse_selector(f"!{key}").matches(labels)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tcp/5432", Service("tcp", 5432, 5432)),
        ("TCP/8000-8100", Service("tcp", 8000, 8100)),
        ("udp/53", Service("udp", 53, 53)),
        ("tcp", Service("tcp")),
        ("icmp", Service("icmp")),
        ("any", Service(None)),
    ],
)
def test_service_parsing(text, expected):
    assert parse_service(text) == expected
    assert parse_service(str(expected)) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("http", "protocol must be"),
        ("tcp/0", "outside 1-65535"),
        ("tcp/70000", "outside 1-65535"),
        ("tcp/100-10", "backwards"),
        ("tcp/x", "not a number"),
        ("icmp/8", "takes no port"),
        ("tcp/", "not a number"),
    ],
)
def test_bad_services_name_the_problem(text, fragment):
    with pytest.raises(ServiceError, match=fragment):
        parse_service(text)


def test_service_matching():
    pg = parse_service("tcp/5432")
    assert pg.matches("tcp", 5432) and not pg.matches("tcp", 5433) and not pg.matches("udp", 5432)
    assert parse_service("icmp").matches("icmp", None)
    assert parse_service("any").matches("udp", 9)


@given(st.integers(1, 65535), st.integers(0, 2000))
def test_port_masks_cover_the_range_exactly(low, span):
    high = min(65535, low + span)
    masks = port_range_masks(low, high)
    covered = set()
    for value, mask in masks:
        block = (~mask & 0xFFFF) + 1
        assert value & ~mask & 0xFFFF == 0, "value must be aligned to its mask"
        covered.update(range(value, value + block))
    assert covered == set(range(low, high + 1))
    assert len(masks) <= 32


def test_port_range_compiles_to_masked_matches():
    assert parse_service("tcp/8000-8003").of_matches() == [{"ip_proto": 6, "tcp_dst": (8000, 0xFFFC)}]
    assert parse_service("udp/53").of_matches() == [{"ip_proto": 17, "udp_dst": 53}]
    assert parse_service("icmp").of_matches() == [{"ip_proto": 1}]
    assert parse_service("any").of_matches() == [{}]
