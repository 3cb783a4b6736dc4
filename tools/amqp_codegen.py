"""Generate ``conveyor/amqp/spec.py`` from the AMQP 0-9-1 spec JSON (RabbitMQ's edition).

Why our own generator rather than pamqp: pamqp decodes every field through a generic per-type
lookup and re-slices the buffer after each field, which costs a copy per field on the server's hot
path (every basic.publish and basic.ack). This script writes one straight-line decoder and encoder
per method instead, with consecutive fixed-size fields folded into one precompiled ``struct``.

Usage:  python tools/amqp_codegen.py [--check]
``--check`` exits 1 when the committed module differs from what the spec generates (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import keyword
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_JSON = ROOT / "conveyor" / "amqp" / "amqp-rabbitmq-0.9.1.json"
TARGET = ROOT / "conveyor" / "amqp" / "spec.py"

FIXED = {"octet": ("B", 1), "short": ("H", 2), "long": ("I", 4), "longlong": ("Q", 8), "timestamp": ("Q", 8)}
PY_TYPES = {
    "octet": "int", "short": "int", "long": "int", "longlong": "int", "timestamp": "int",
    "bit": "bool", "shortstr": "str", "longstr": "bytes", "table": "dict[str, Any] | None",
}


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def field_name(name: str) -> str:
    py = name.replace("-", "_")
    return py + "_" if keyword.iskeyword(py) else py


def resolve(domains: dict[str, str], arg: dict) -> str:
    return arg.get("type") or domains[arg["domain"]]


def default_literal(kind: str, arg: dict) -> str:
    if "default-value" in arg:
        value = arg["default-value"]
        if kind == "table":
            return "None"
        if kind == "longstr":
            return repr(str(value).encode())
        if kind == "bit":
            return repr(bool(value))
        return repr(value)
    return {"bit": "False", "shortstr": '""', "longstr": 'b""', "table": "None"}.get(kind, "0")


class Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.structs: dict[str, str] = {}

    def struct(self, fmt: str) -> str:
        name = "_S_" + fmt
        self.structs[fmt] = name
        return name

    def w(self, line: str = "") -> None:
        self.lines.append(line)


def group_fields(fields: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Split into runs: ('fixed', [...]), ('bits', [...]), or single variable-size fields."""
    runs: list[tuple[str, list[tuple[str, str]]]] = []
    for name, kind in fields:
        group = "fixed" if kind in FIXED else "bits" if kind == "bit" else kind
        if runs and runs[-1][0] == group and group in ("fixed", "bits") and not (
            group == "bits" and len(runs[-1][1]) == 8
        ):
            runs[-1][1].append((name, kind))
        else:
            runs.append((group, [(name, kind)]))
    return runs


def emit_decoder(e: Emitter, cls: str, fields: list[tuple[str, str]]) -> None:
    e.w("    @classmethod")
    e.w(f"    def decode(cls, buf: Any, off: int) -> {cls}:")
    e.w('        """Decode the arguments that start at ``off`` (after the class and method ids)."""')
    e.w("        self = cls.__new__(cls)")
    for group, run in group_fields(fields):
        if group == "fixed":
            fmt = "!" + "".join(FIXED[k][0] for _, k in run)
            size = sum(FIXED[k][1] for _, k in run)
            targets = ", ".join(f"self.{n}" for n, _ in run) + ("," if len(run) == 1 else "")
            e.w(f"        {targets} = {e.struct(fmt)}.unpack_from(buf, off)")
            e.w(f"        off += {size}")
        elif group == "bits":
            e.w("        bits = buf[off]")
            e.w("        off += 1")
            for i, (n, _) in enumerate(run):
                e.w(f"        self.{n} = bool(bits & {1 << i})")
        elif group == "shortstr":
            ((n, _),) = run
            e.w("        end = off + 1 + buf[off]")
            e.w(f'        self.{n} = str(buf[off + 1 : end], "utf-8", "surrogateescape")')
            e.w("        off = end")
        elif group == "longstr":
            ((n, _),) = run
            e.w("        (size,) = _S_I.unpack_from(buf, off)")
            e.w("        end = off + 4 + size")
            e.w(f"        self.{n} = bytes(buf[off + 4 : end])")
            e.w("        off = end")
        elif group == "table":
            ((n, _),) = run
            e.w(f"        self.{n}, off = decode_table(buf, off)")
        else:
            raise SystemExit(f"unknown field type {group}")
    e.w("        if off > len(buf):")
    e.w(f'            raise DecodeError("{cls} arguments run past the end of the frame")')
    e.w("        return self")


def emit_encoder(e: Emitter, cls: str, class_id: int, method_id: int, fields: list[tuple[str, str]]) -> None:
    e.w("    def encode(self) -> bytes:")
    head = f"{(class_id << 16 | method_id):08x}"
    head_lit = "b'" + "".join(f"\\x{head[i:i + 2]}" for i in range(0, 8, 2)) + "'"
    if not fields:
        e.w(f"        return {head_lit}")
        return
    e.w(f"        parts: list[bytes] = [{head_lit}]")
    for group, run in group_fields(fields):
        if group == "fixed":
            fmt = "!" + "".join(FIXED[k][0] for _, k in run)
            args = ", ".join(f"self.{n}" for n, _ in run)
            e.w(f"        parts.append({e.struct(fmt)}.pack({args}))")
        elif group == "bits":
            expr = " | ".join(f"({1 << i} if self.{n} else 0)" for i, (n, _) in enumerate(run))
            e.w(f"        parts.append(_S_B.pack({expr}))")
        elif group == "shortstr":
            ((n, _),) = run
            e.w(f'        raw = self.{n}.encode("utf-8", "surrogateescape")')
            e.w("        if len(raw) > 255:")
            e.w(f'            raise ValueError("{cls}.{n} is longer than 255 bytes")')
            e.w("        parts.append(_S_B.pack(len(raw)))")
            e.w("        parts.append(raw)")
        elif group == "longstr":
            ((n, _),) = run
            e.w(f"        parts.append(_S_I.pack(len(self.{n})))")
            e.w(f"        parts.append(self.{n})")
        elif group == "table":
            ((n, _),) = run
            e.w(f"        parts.append(encode_table(self.{n}))")
    e.w('        return b"".join(parts)')


def emit_properties(e: Emitter, domains: dict[str, str], props: list[dict]) -> None:
    """The content-header property list of class basic (the only class with content in use)."""
    fields = [(field_name(p["name"]), resolve(domains, p)) for p in props]
    e.w("class BasicProperties:")
    e.w('    """Content-header properties of class basic. Messages keep these raw; decode on demand."""')
    e.w()
    e.w(f"    __slots__ = {tuple(n for n, _ in fields)!r}")
    e.w()
    args = ", ".join(f"{n}: {PY_TYPES[k]} | None = None" for n, k in fields)
    e.w(f"    def __init__(self, {args}) -> None:")
    for n, _ in fields:
        e.w(f"        self.{n} = {n}")
    e.w()
    e.w("    def __repr__(self) -> str:")
    e.w('        present = (k for k in self.__slots__ if getattr(self, k) is not None)')
    e.w('        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in present)')
    e.w('        return f"BasicProperties({shown})"')
    e.w()
    e.w("    def __eq__(self, other: object) -> bool:")
    e.w("        if not isinstance(other, BasicProperties):")
    e.w("            return NotImplemented")
    e.w("        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)")
    e.w()
    e.w("    @classmethod")
    e.w("    def decode(cls, buf: Any, off: int = 0) -> BasicProperties:")
    e.w('        """Decode property flags and the present properties, starting at ``off``."""')
    e.w("        try:")
    e.w("            return cls._decode(buf, off)")
    e.w("        except (struct.error, IndexError) as exc:")
    e.w('            raise DecodeError("content header properties run past the end of the frame") from exc')
    e.w()
    e.w("    @classmethod")
    e.w("    def _decode(cls, buf: Any, off: int) -> BasicProperties:")
    e.w("        self = cls.__new__(cls)")
    e.w("        (flags,) = _S_H.unpack_from(buf, off)")
    e.w("        off += 2")
    e.w("        if flags & 1:")
    e.w('            raise DecodeError("property flags continuation is not used by class basic")')
    for i, (n, k) in enumerate(fields):
        bit = 1 << (15 - i)
        e.w(f"        if flags & {bit}:")
        if k in FIXED:
            fmt, size = FIXED[k]
            e.w(f"            (self.{n},) = {e.struct('!' + fmt)}.unpack_from(buf, off)")
            e.w(f"            off += {size}")
        elif k == "shortstr":
            e.w("            end = off + 1 + buf[off]")
            e.w(f'            self.{n} = str(buf[off + 1 : end], "utf-8", "surrogateescape")')
            e.w("            off = end")
        elif k == "table":
            e.w(f"            self.{n}, off = decode_table(buf, off)")
        else:
            raise SystemExit(f"property type {k} not supported")
        e.w("        else:")
        e.w(f"            self.{n} = None")
    e.w("        if off > len(buf):")
    e.w('            raise DecodeError("content header properties run past the end of the frame")')
    e.w("        return self")
    e.w()
    e.w("    def encode(self) -> bytes:")
    e.w('        """Property flags followed by the present properties (no class id, weight or size)."""')
    e.w("        flags = 0")
    e.w("        parts: list[bytes] = [b'']")
    for i, (n, k) in enumerate(fields):
        bit = 1 << (15 - i)
        e.w(f"        if self.{n} is not None:")
        e.w(f"            flags |= {bit}")
        if k in FIXED:
            fmt, _ = FIXED[k]
            e.w(f"            parts.append({e.struct('!' + fmt)}.pack(self.{n}))")
        elif k == "shortstr":
            e.w(f'            raw = self.{n}.encode("utf-8", "surrogateescape")')
            e.w("            parts.append(_S_B.pack(len(raw)) + raw)")
        elif k == "table":
            e.w(f"            parts.append(encode_table(self.{n}))")
    e.w("        parts[0] = _S_H.pack(flags)")
    e.w('        return b"".join(parts)')
    e.w()
    e.w()


def generate(spec: dict) -> str:
    domains = {name: kind for name, kind in spec["domains"]}
    e = Emitter()
    body = Emitter()
    body.structs = e.structs
    method_classes: list[str] = []
    for klass in spec["classes"]:
        for method in klass["methods"]:
            cls = camel(klass["name"]) + camel(method["name"])
            method_classes.append(cls)
            fields = [(field_name(a["name"]), resolve(domains, a)) for a in method["arguments"]]
            defaults = [default_literal(k, a) for (_, k), a in zip(fields, method["arguments"], strict=True)]
            body.w(f"class {cls}(Method):")
            body.w(f'    """{klass["name"]}.{method["name"]}"""')
            body.w()
            body.w(f"    __slots__ = {tuple(n for n, _ in fields)!r}")
            body.w(f"    CLASS_ID = {klass['id']}")
            body.w(f"    METHOD_ID = {method['id']}")
            body.w(f"    INDEX = 0x{klass['id'] << 16 | method['id']:08X}")
            body.w(f'    NAME = "{klass["name"]}.{method["name"]}"')
            body.w(f"    SYNCHRONOUS = {bool(method.get('synchronous', False))}")
            body.w(f"    CONTENT = {bool(method.get('content', False))}")
            body.w()
            if fields:
                params = ", ".join(
                    f"{n}: {PY_TYPES[k]} = {d}" for (n, k), d in zip(fields, defaults, strict=True)
                )
                body.w(f"    def __init__(self, {params}) -> None:")
                for n, _ in fields:
                    body.w(f"        self.{n} = {n}")
                body.w()
            emit_encoder(body, cls, klass["id"], method["id"], fields)
            body.w()
            emit_decoder(body, cls, fields)
            body.w()
            body.w()
    basic = next(k for k in spec["classes"] if k["name"] == "basic")
    emit_properties(body, domains, basic["properties"])

    e.w('"""AMQP 0-9-1 methods, constants and basic properties.')
    e.w()
    e.w("GENERATED by tools/amqp_codegen.py from amqp-rabbitmq-0.9.1.json — do not edit.")
    e.w("Regenerate with ``python tools/amqp_codegen.py``; CI checks that this file is current.")
    e.w()
    e.w("The spec JSON this module is derived from carries this notice:")
    e.w()
    for line in spec["copyright"]:
        e.w("    " + line.rstrip().replace('"""', "'''") if line.strip() else "")
    e.w('"""')
    e.w()
    e.w("from __future__ import annotations")
    e.w()
    e.w("import struct")
    e.w("from typing import Any, ClassVar")
    e.w()
    e.w("from conveyor.amqp.values import DecodeError, decode_table, encode_table")
    e.w()
    for const in spec["constants"]:
        e.w(f"{const['name'].replace('-', '_')} = {const['value']}")
    e.w()
    soft = sorted(c["value"] for c in spec["constants"] if c.get("class") == "soft-error")
    hard = sorted(c["value"] for c in spec["constants"] if c.get("class") == "hard-error")
    e.w(f"SOFT_ERRORS = frozenset({soft!r})")
    e.w(f"HARD_ERRORS = frozenset({hard!r})")
    names = {c["value"]: c["name"].replace("-", "_") for c in spec["constants"] if "class" in c}
    e.w(f"REPLY_NAMES: dict[int, str] = {names!r}")
    e.w()
    e.structs.setdefault("!B", "_S_!B")
    e.structs.setdefault("!H", "_S_!H")
    e.structs.setdefault("!I", "_S_!I")
    header = list(e.lines)
    e.lines = []
    e.w()
    e.w("class Method:")
    e.w('    """Base of every generated method class: ids, name and a generic repr/equality."""')
    e.w()
    e.w("    __slots__ = ()")
    e.w("    CLASS_ID: ClassVar[int]")
    e.w("    METHOD_ID: ClassVar[int]")
    e.w("    INDEX: ClassVar[int]")
    e.w("    NAME: ClassVar[str]")
    e.w("    SYNCHRONOUS: ClassVar[bool]")
    e.w("    CONTENT: ClassVar[bool]")
    e.w()
    e.w("    def encode(self) -> bytes:  # pragma: no cover - every subclass overrides")
    e.w("        raise NotImplementedError")
    e.w()
    e.w("    @classmethod")
    e.w("    def decode(cls, buf: Any, off: int) -> Method:  # pragma: no cover")
    e.w("        raise NotImplementedError")
    e.w()
    e.w("    def __repr__(self) -> str:")
    e.w('        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)')
    e.w('        return f"{self.NAME}({args})"')
    e.w()
    e.w("    def __eq__(self, other: object) -> bool:")
    e.w("        if type(other) is not type(self):")
    e.w("            return NotImplemented")
    e.w("        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)")
    e.w()
    e.w()
    tail = Emitter()
    tail.w("METHODS: dict[int, type[Method]] = {")
    for cls in method_classes:
        tail.w(f"    {cls}.INDEX: {cls},")
    tail.w("}")
    tail.w()
    tail.w()
    tail.w("def decode_method(buf: Any) -> Method:")
    tail.w('    """Decode a method frame payload. Raises DecodeError for an unknown or malformed method."""')
    tail.w("    try:")
    tail.w("        (index,) = _S_I.unpack_from(buf, 0)")
    tail.w("        cls = METHODS[index]")
    tail.w("    except struct.error as exc:")
    tail.w('        raise DecodeError("method frame shorter than its class and method ids") from exc')
    tail.w("    except KeyError as exc:")
    tail.w('        raise DecodeError(f"unknown method {index >> 16}/{index & 0xFFFF}") from exc')
    tail.w("    try:")
    tail.w("        return cls.decode(buf, 4)")
    tail.w("    except (struct.error, IndexError, UnicodeDecodeError) as exc:")
    tail.w('        raise DecodeError(f"malformed {cls.NAME} arguments") from exc')
    structs = [f'{name.replace("!", "")} = struct.Struct("{fmt}")' for fmt, name in sorted(e.structs.items())]
    out = [*header, "", *structs, *e.lines, *body.lines, *tail.lines]
    text = "\n".join(out) + "\n"
    return text.replace("_S_!", "_S_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if spec.py is not what the spec generates")
    args = parser.parse_args()
    text = generate(json.loads(SPEC_JSON.read_text()))
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python tools/amqp_codegen.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
