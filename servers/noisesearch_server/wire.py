"""Where an undecodable request goes wrong, named as the field a client would fix.

The protobuf parser only says "Wire format was corrupt" or "String field had bad UTF-8". A client that sent
such bytes (a truncated buffer, a message of another type, a string that is not UTF-8) needs the field: this
walks the wire format against the message's descriptor and reports the first problem, with the same field
paths as validation (`candidates[0].lineage.ops[3].solve.solver`); at the top level, before any field was read,
the path is the message's own name (`EvaluateRequest`). It runs only after the parser refused the bytes.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# upb's default recursion limit: deeper nesting (only possible through unknown groups here) is refused.
MAX_DEPTH = 100

_VARINT, _FIXED64, _LENGTH, _GROUP_START, _GROUP_END, _FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_TYPE_NAMES = {
    _VARINT: "varint", _FIXED64: "64-bit", _LENGTH: "length-delimited", _GROUP_START: "group start",
    _GROUP_END: "group end", _FIXED32: "32-bit",
}
_FIXED64_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FIXED32_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_LENGTH_TYPES = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}


class _Corrupt(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def _scalar_wire_type(field: FieldDescriptor) -> int:
    if field.type in _FIXED64_TYPES:
        return _FIXED64
    if field.type in _FIXED32_TYPES:
        return _FIXED32
    if field.type in _LENGTH_TYPES:
        return _LENGTH
    return _VARINT


def _is_repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` is the newer spelling; `label` the one older protobuf releases have.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _varint(data: bytes, pos: int, end: int, path: str, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _Corrupt(path, f"{what} is cut off at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise _Corrupt(path, f"{what} at byte {pos - 10} is a varint longer than 10 bytes")


def _fixed(pos: int, size: int, end: int, path: str, what: str) -> int:
    if pos + size > end:
        raise _Corrupt(path, f"{what} is cut off at byte {pos}; want {size} bytes")
    return pos + size


def _check_packed(field: FieldDescriptor, data: bytes, start: int, end: int, path: str) -> None:
    wire = _scalar_wire_type(field)
    if wire == _VARINT:
        pos = start
        while pos < end:
            _, pos = _varint(data, pos, end, path, "a packed value")
        return
    size = 8 if wire == _FIXED64 else 4
    if (end - start) % size:
        raise _Corrupt(path, f"{end - start} bytes of packed {size * 8}-bit values; want a multiple of {size}")


def _fields(
    descriptor: Descriptor | None,
    data: bytes,
    start: int,
    end: int,
    root: str,
    path: str,
    depth: int,
    group: int | None = None,
) -> int:
    """Reads the fields in data[start:end] (of `descriptor`, or all unknown when None) and returns where they
    stop: `end`, or just after the end-group tag that closes `group`. Raises _Corrupt at the first problem.
    `path` is the enclosing field's path, "" at the top level, where problems are put on `root`."""
    here = path or root
    if depth > MAX_DEPTH:
        raise _Corrupt(here, f"nested more than {MAX_DEPTH} levels deep")
    occurrences: dict[int, int] = {}
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos, end, here, "a field tag")
        number, wire = tag >> 3, tag & 7
        if wire == _GROUP_END:
            if number == group:
                return pos
            raise _Corrupt(here, f"an end-group tag for field {number} at byte {pos - 1}, with no such group open")
        if number == 0:
            raise _Corrupt(here, f"a tag with field number 0 at byte {pos - 1}; field numbers start at 1")
        if wire not in _WIRE_TYPE_NAMES:
            raise _Corrupt(here, f"field {number} has wire type {wire}, which does not exist (0 to 5)")
        field = descriptor.fields_by_number.get(number) if descriptor is not None else None
        expected = _scalar_wire_type(field) if field is not None else None
        repeated = field is not None and _is_repeated(field)
        packed = repeated and wire == _LENGTH and expected != _LENGTH
        if field is not None and (wire == expected or packed):
            index = occurrences.get(number, 0)
            occurrences[number] = index + 1
            field_path = f"{path}.{field.name}" if path else field.name
            if repeated and not packed:
                field_path += f"[{index}]"
            here, what = field_path, "the value"
        else:
            # A field this message does not have, or a known one sent with another wire type: the parser keeps
            # both as unknown fields, so only their framing can be wrong.
            field = None
            field_path = path
            what = f"unknown field {number}'s {_WIRE_TYPE_NAMES[wire]} value"
        if wire == _VARINT:
            _, pos = _varint(data, pos, end, here, what)
        elif wire == _FIXED64:
            pos = _fixed(pos, 8, end, here, what)
        elif wire == _FIXED32:
            pos = _fixed(pos, 4, end, here, what)
        elif wire == _GROUP_START:
            pos = _fields(None, data, pos, end, root, field_path, depth + 1, group=number)
        else:
            length, pos = _varint(data, pos, end, here, f"the length of {what}")
            if pos + length > end:
                raise _Corrupt(here, f"{what} says it has {length} bytes but only {end - pos} follow")
            value_end = pos + length
            if field is not None and packed:
                _check_packed(field, data, pos, value_end, field_path)
            elif field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    data[pos:value_end].decode("utf-8")
                except UnicodeDecodeError as error:
                    raise _Corrupt(field_path, f"not UTF-8 (byte {error.start} of the string); want UTF-8 text") from None
            elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                _fields(field.message_type, data, pos, value_end, root, field_path, depth + 1)
            pos = value_end
    if group is not None:
        raise _Corrupt(here, f"the group of field {group} is never closed")
    return pos


def describe_decode_failure(descriptor: Descriptor, data: bytes, error: Exception) -> str:
    """'path: problem' for bytes the parser refused; the parser's own words when the walk finds nothing."""
    try:
        _fields(descriptor, data, 0, len(data), descriptor.name, "", 0)
    except _Corrupt as corrupt:
        return f"{corrupt} (these bytes are no {descriptor.full_name})"
    return f"{descriptor.name}: these bytes are no {descriptor.full_name} ({error})"


class _OverBudget(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@functools.cache
def _holds_repeated_messages(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold repeated submessages, at any depth (the proto has no cycles)."""
    return any(
        field.type == FieldDescriptor.TYPE_MESSAGE
        and (_is_repeated(field) or _holds_repeated_messages(field.message_type))
        for field in descriptor.fields
    )


def first_field_over_budget(descriptor: Descriptor, data: bytes, budget: int) -> str | None:
    """The path where a message's field count passes `budget`, or None. Counts without parsing: every field of
    the message and of each submessage that can hold repeated submessages (a candidate, its lineage, its noise),
    unknown fields and groups included; a repeated entry (an op, a sample) is one field, not looked inside.
    Parsing makes an object of every one of them, ~80 bytes of memory for an empty entry 2 bytes long, before a
    count can be checked; this bounds that work by `budget` steps. Bytes that do not decode give None: the
    parser refuses them, and describe_decode_failure says where."""
    if len(data) <= budget:
        # Every field takes a byte at least: a message this short cannot pass the budget, and is not walked.
        return None
    steps = 0

    def walk(
        message_type: Descriptor | None, start: int, end: int, path: str, depth: int, group: int | None = None
    ) -> int:
        nonlocal steps
        here = path or descriptor.name
        if depth > MAX_DEPTH:
            raise _Corrupt(here, "nested too deep")
        occurrences: dict[int, int] = {}
        pos = start
        while pos < end:
            steps += 1
            if steps > budget:
                raise _OverBudget(here)
            tag, pos = _varint(data, pos, end, here, "a field tag")
            number, wire = tag >> 3, tag & 7
            if wire == _GROUP_END:
                if number != group:
                    raise _Corrupt(here, "an unopened group")
                return pos
            if wire == _VARINT:
                _, pos = _varint(data, pos, end, here, "a value")
            elif wire == _FIXED64:
                pos = _fixed(pos, 8, end, here, "a value")
            elif wire == _FIXED32:
                pos = _fixed(pos, 4, end, here, "a value")
            elif wire == _GROUP_START:
                pos = walk(None, pos, end, path, depth + 1, number)
            elif wire == _LENGTH:
                length, pos = _varint(data, pos, end, here, "a length")
                if pos + length > end:
                    raise _Corrupt(here, "a length past the end")
                field = message_type.fields_by_number.get(number) if message_type is not None else None
                if (
                    field is not None
                    and field.type == FieldDescriptor.TYPE_MESSAGE
                    and _holds_repeated_messages(field.message_type)
                ):
                    index = occurrences.get(number, 0)
                    occurrences[number] = index + 1
                    child = f"{path}.{field.name}" if path else field.name
                    child = f"{child}[{index}]" if _is_repeated(field) else child
                    walk(field.message_type, pos, pos + length, child, depth + 1)
                pos += length
            else:
                raise _Corrupt(here, "a wire type that does not exist")
        if group is not None:
            raise _Corrupt(here, "an unclosed group")
        return pos

    try:
        walk(descriptor, 0, len(data), "", 0)
    except _Corrupt:
        return None
    except _OverBudget as over:
        return over.path
    return None
