"""Property tests of the wire codec: field tables, every method class, basic properties.

Argument strategies are derived from the same spec JSON the generator reads, so a new method or a
changed field type is covered without editing this file.
"""

from __future__ import annotations

import contextlib
import json
import keyword
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.amqp import spec
from conveyor.amqp.values import DecodeError, decode_table, encode_table

# Hypothesis imports libcst (and so mypy_extensions) to write its failure patch; under
# filterwarnings=error that DeprecationWarning would turn a plain test failure into an INTERNALERROR.

SPEC_JSON = Path(spec.__file__).with_name("amqp-rabbitmq-0.9.1.json")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field_name(name: str) -> str:
    py = name.replace("-", "_")
    return py + "_" if keyword.iskeyword(py) else py


def _load_field_types() -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
    data = json.loads(SPEC_JSON.read_text())
    domains = dict(data["domains"])

    def kind(arg: dict[str, Any]) -> str:
        return arg.get("type") or domains[arg["domain"]]

    methods = {}
    for klass in data["classes"]:
        for method in klass["methods"]:
            name = f"{klass['name']}.{method['name']}"
            methods[name] = [(_field_name(a["name"]), kind(a)) for a in method["arguments"]]
    basic = next(k for k in data["classes"] if k["name"] == "basic")
    props = [(_field_name(p["name"]), kind(p)) for p in basic["properties"]]
    return methods, props


METHOD_FIELDS, PROPERTY_FIELDS = _load_field_types()

# -- field values ------------------------------------------------------------------------------------

keys = st.text(max_size=20).filter(lambda k: len(k.encode()) <= 255)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.builds(lambda unscaled, scale: Decimal(unscaled).scaleb(-scale), st.integers(-(2**31), 2**31 - 1),
              st.integers(0, 12)),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=0)),
)
field_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)
tables = st.dictionaries(keys, field_values, max_size=8)


@SETTINGS
@given(tables)
def test_table_round_trip(table: dict[str, Any]) -> None:
    raw = encode_table(table)
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert decoded == table


@SETTINGS
@given(tables, st.binary(max_size=8), st.binary(max_size=8))
def test_table_round_trip_inside_a_larger_buffer(table: dict[str, Any], before: bytes, after: bytes) -> None:
    raw = before + encode_table(table) + after
    decoded, end = decode_table(memoryview(raw), len(before))
    assert decoded == table
    assert end == len(raw) - len(after)


@SETTINGS
@given(st.binary(max_size=64))
def test_decode_table_on_arbitrary_bytes_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_table(raw, 0)


@SETTINGS
@given(st.binary(max_size=60).map(lambda b: len(b).to_bytes(4, "big") + b))
def test_decode_table_on_arbitrary_bodies_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_table(raw, 0)


# -- methods -----------------------------------------------------------------------------------------

shortstrs = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255) | st.text(
    alphabet="ab", min_size=255, max_size=255
)
ARG_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "octet": st.integers(0, 2**8 - 1),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**64 - 1),
    "bit": st.booleans(),
    "shortstr": shortstrs,
    "longstr": st.binary(max_size=300),
    "table": tables,
}


def method_instances() -> st.SearchStrategy[spec.Method]:
    def build(cls: type[spec.Method]) -> st.SearchStrategy[spec.Method]:
        fields = METHOD_FIELDS[cls.NAME]
        assert tuple(name for name, _ in fields) == cls.__slots__, cls.NAME
        return st.fixed_dictionaries({name: ARG_STRATEGIES[kind] for name, kind in fields}).map(lambda kw: cls(**kw))

    return st.sampled_from(sorted(spec.METHODS.values(), key=lambda c: c.INDEX)).flatmap(build)


def test_every_spec_method_has_a_generated_class() -> None:
    assert sorted(METHOD_FIELDS) == sorted(cls.NAME for cls in spec.METHODS.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method_instances())
def test_method_round_trip(method: spec.Method) -> None:
    raw = method.encode()
    decoded = spec.decode_method(raw)
    assert type(decoded) is type(method)
    assert decoded == method
    assert decoded.encode() == raw


@SETTINGS
@given(method_instances(), st.data())
def test_truncated_method_raises_only_decode_error(method: spec.Method, data: st.DataObject) -> None:
    raw = method.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        spec.decode_method(raw[:cut])
    except DecodeError:
        pass
    else:
        raise AssertionError(f"{method.NAME} decoded from {cut} of {len(raw)} bytes")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_decode_method_on_arbitrary_bytes_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        spec.decode_method(raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(spec.METHODS)), st.binary(max_size=60))
def test_decode_known_method_ids_with_arbitrary_arguments_raises_only_decode_error(index: int, rest: bytes) -> None:
    with contextlib.suppress(DecodeError):
        spec.decode_method(index.to_bytes(4, "big") + rest)


# -- basic properties ----------------------------------------------------------------------------------

PROPERTY_STRATEGIES = {**ARG_STRATEGIES, "shortstr": st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)}


@st.composite
def basic_properties(draw: st.DrawFn) -> spec.BasicProperties:
    present = draw(st.sets(st.sampled_from([name for name, _ in PROPERTY_FIELDS])))
    kwargs = {name: draw(PROPERTY_STRATEGIES[kind]) for name, kind in PROPERTY_FIELDS if name in present}
    return spec.BasicProperties(**kwargs)


def test_property_fields_match_the_generated_class() -> None:
    assert tuple(name for name, _ in PROPERTY_FIELDS) == spec.BasicProperties.__slots__


@settings(max_examples=150, deadline=None)
@given(basic_properties())
def test_basic_properties_round_trip(props: spec.BasicProperties) -> None:
    raw = props.encode()
    decoded = spec.BasicProperties.decode(raw)
    assert decoded == props
    assert decoded.encode() == raw


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60))
def test_basic_properties_decode_on_arbitrary_bytes_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        spec.BasicProperties.decode(raw)
