"""Counting a serialized protobuf message's repeated elements before it is decoded.

Decoding amplifies: an element of a repeated message field can be 2 bytes on the wire and ~56 bytes decoded
(upb), a packed int32 label 1 byte and 4-8, an empty string 2 bytes and 16 (measured on 8 MiB messages:
4M empty `endpoints` +224 MB, 4M `metrics` +128 MB, 8M `labels` +64 MB, 8M `Tensor.shape` +128 MB), and
`list(...)` of it costs more again. `count_problem` walks the message's fields without decoding them and
names the first field with more elements than allowed, so such a request is refused before it costs memory.

What it counts, for a message and every sub-message in it (their number is itself bounded):
- a repeated field's elements: packed scalars by their varints (bytes below 0x80) or fixed width, others one
  per occurrence; limit from `limits[field.full_name]`, else `DEFAULT_REPEATED` for message, string and bytes
  fields (packed numbers amplify at most 8x and are bounded by the message's size);
- a singular field sent more than `MAX_SINGULAR` times (legal protobuf, "the last one wins", but no client
  does it, and each occurrence is work);
- unknown fields: at most `MAX_UNKNOWN` occurrences in all.
Groups (a proto2 wire form no field here uses) are skipped and counted as unknown fields. A message it cannot
walk (a truncated varint, a length past the end, a stray end-group) is left to the decoder, whose error is the
one the client gets: this walk only refuses what it is sure about.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

DEFAULT_REPEATED = 4096
MAX_SINGULAR = 16
MAX_UNKNOWN = 1024
MAX_DEPTH = 32
_HIGH_BIT = bytes(range(128))  # deleting these leaves the bytes that continue a varint
_FIXED = {FieldDescriptor.TYPE_FIXED32: 4, FieldDescriptor.TYPE_SFIXED32: 4, FieldDescriptor.TYPE_FLOAT: 4,
          FieldDescriptor.TYPE_FIXED64: 8, FieldDescriptor.TYPE_SFIXED64: 8, FieldDescriptor.TYPE_DOUBLE: 8}
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


class _Unwalkable(Exception):
    """Malformed for this walk: the decoder decides."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Unwalkable
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _packed_elements(payload: memoryview, field: FieldDescriptor, limit: int | None) -> int:
    """Elements of a packed repeated scalar (a lower bound when that is already over `limit`)."""
    width = _FIXED.get(field.type)
    if width:
        return len(payload) // width
    if limit is not None and len(payload) // 10 > limit:  # at most ten bytes per varint: over for sure
        return len(payload) // 10
    data = bytes(payload)
    return len(data) - len(data.translate(None, _HIGH_BIT))  # bytes that end a varint


def _skip_group(buf: memoryview, pos: int, number: int, depth: int) -> int:
    """The position after the group `number` that starts at `pos` (its fields skipped, nested groups too)."""
    if depth > MAX_DEPTH:
        raise _Unwalkable
    while True:
        tag, pos = _varint(buf, pos)
        inner, wire = tag >> 3, tag & 7
        if wire == 4:
            if inner != number:
                raise _Unwalkable
            return pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            pos += size
        elif wire == 3:
            pos = _skip_group(buf, pos, inner, depth + 1)
        else:
            raise _Unwalkable
        if pos > len(buf):
            raise _Unwalkable


def count_problem(data, descriptor: Descriptor, limits: dict[str, int]) -> tuple[str, str] | None:
    """(field path, reason) of the first count over its limit in serialized `data`, or None."""
    try:
        return _walk(memoryview(data), descriptor, limits, "", 0, [0])
    except _Unwalkable:
        return None


def _walk(buf: memoryview, desc: Descriptor, limits, path: str, depth: int, unknown: list) -> tuple[str, str] | None:
    if depth > MAX_DEPTH:
        raise _Unwalkable
    counts: dict[int, int] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload = None
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            payload = None
        elif wire == 2:
            size, pos = _varint(buf, pos)
            payload = buf[pos:pos + size]
            pos += size
        elif wire == 3:  # a group (no proto3 field is one): kept as an unknown field, so counted as one
            pos = _skip_group(buf, pos, number, depth)
            unknown[0] += 1
            if unknown[0] > MAX_UNKNOWN:
                return path or "(message)", f"more than {MAX_UNKNOWN} fields this server does not know"
            continue
        else:  # an end-group without its start, or no wire type at all: the decoder refuses it
            raise _Unwalkable
        if pos > len(buf):
            raise _Unwalkable
        field = desc.fields_by_number.get(number)
        if field is None:
            unknown[0] += 1
            if unknown[0] > MAX_UNKNOWN:
                return path or "(message)", f"more than {MAX_UNKNOWN} fields this server does not know"
            continue
        name = f"{path}.{field.name}" if path else field.name
        repeated = field.is_repeated
        if repeated:
            limit = limits.get(field.full_name, DEFAULT_REPEATED if field.type in _LENGTH_DELIMITED else None)
            packed = payload is not None and field.type not in _LENGTH_DELIMITED
            count = counts.get(number, 0) + (_packed_elements(payload, field, limit) if packed else 1)
            if limit is not None and count > limit:
                return name, f"at most {limit} elements (the server's limit), got at least {count}"
        else:
            count = counts.get(number, 0) + 1
            if count > MAX_SINGULAR:
                return name, f"sent {count} times; a field that is not repeated is sent once"
        counts[number] = count
        if field.type == FieldDescriptor.TYPE_MESSAGE and payload is not None:
            where = f"{name}[{count - 1}]" if repeated else name
            found = _walk(payload, field.message_type, limits, where, depth + 1, unknown)
            if found:
                return found
    return None
