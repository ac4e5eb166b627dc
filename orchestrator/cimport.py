"""``orchestrator import-c SRC_DIR DEST_DIR``: port C Web Framework migrations to SQL files.

A C migration is ``int up(const char* dbid)`` compiled into ``lib<name>.so``; most
only send SQL: ``dbquery(dbid, "<string literals>", NULL)`` (or the older
``dbqueryf(dbid, "<literals>")``), keep the result, check it with ``dbresult_ok``
and free it. Such a file becomes ``<name>.sql`` (same version), its literals joined
and C escapes decoded, one statement per call. Anything else in ``up`` (a loop, a
condition other than the "stop if this query failed" check, another call, SQL built
at run time, query parameters) cannot be converted faithfully: the file is listed,
one line each, for porting by hand. Existing destination files are never
overwritten unless asked; an identical one is left as it is.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

__all__ = ["NotConvertible", "convert", "import_dir"]

log = logging.getLogger("orchestrator")


class NotConvertible(Exception):
    """Why a C migration cannot become a SQL file; ``line`` is the source line."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class _Token:
    kind: str  # "id" | "num" | "str" | "chr" | "pp" | "op"
    text: str
    line: int


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f\v]+|\\\n)|(?P<nl>\n)|(?P<comment>//[^\n]*|/\*[\s\S]*?\*/)"""
    r"""|(?P<str>(?:u8|u|U|L)?"(?:[^"\\\n]|\\[\s\S])*")|(?P<chr>(?:u8|u|U|L)?'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<id>[A-Za-z_]\w*)|(?P<num>\.?\d[\w.]*)"""
    r"""|(?P<op>->|\+\+|--|&&|\|\||<<=?|>>=?|[<>=!+\-*/%&|^]=|[\s\S])"""
)
_PP = re.compile(r"[ \t]*#(?:[^\n\\]|\\[\s\S])*")
_LOOPS = {"for", "while", "do", "goto", "switch"}


def _tokens(source: str) -> list[_Token]:
    out: list[_Token] = []
    pos, line, at_line_start = 0, 1, True
    while pos < len(source):
        if at_line_start:
            pp = _PP.match(source, pos)
            if pp:  # a preprocessor line, continuations included
                out.append(_Token("pp", " ".join(pp.group().split()), line))
                line += pp.group().count("\n")
                pos = pp.end()
                at_line_start = False
                continue
        m = _TOKEN.match(source, pos)
        assert m is not None  # the last alternative takes any character
        kind = m.lastgroup or "op"
        text = m.group()
        if kind == "nl":
            at_line_start = True
        elif kind not in ("ws", "comment"):
            at_line_start = False
            if kind == "str" and not text.startswith('"'):
                raise NotConvertible(f"a {text.split(chr(34))[0]}-prefixed string literal", line)
            out.append(_Token(kind, text, line))
        elif kind == "comment" and "\n" in text:
            at_line_start = False
        line += text.count("\n")
        pos = m.end()
    return out


_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]+)|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|\n|(.))", re.S)


def _literal_bytes(token: _Token) -> bytes:
    """The bytes a plain C string literal stands for (without the terminating NUL)."""
    body = token.text[1:-1]
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += body[pos:m.start()].encode("utf-8")
        pos = m.end()
        octal, hexa, u4, u8, other = m.groups()
        if octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            value = int(hexa, 16)
            if value > 0xFF:
                raise NotConvertible(f"escape \\x{hexa} does not fit in a byte", token.line)
            out.append(value)
        elif u4 or u8:
            out += chr(int(u4 or u8, 16)).encode("utf-8")
        elif other is not None:
            if other not in _SIMPLE_ESCAPES:
                raise NotConvertible(f"unknown escape \\{other} in a string literal", token.line)
            out.append(_SIMPLE_ESCAPES[other])
        # a backslash-newline is a line continuation: nothing
    out += body[pos:].encode("utf-8")
    if 0 in out:
        raise NotConvertible("a string literal holds a NUL byte (the C tool would cut the SQL there)", token.line)
    return bytes(out)


class _Body:
    """A cursor over the tokens of ``up``'s body, matching the only statements a SQL-only migration has."""

    def __init__(self, tokens: list[_Token], dbid: str):
        self.t = tokens
        self.i = 0
        self.dbid = dbid
        self.sql: list[tuple[str, int]] = []

    def peek(self, offset: int = 0) -> _Token | None:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else None

    def take(self, *texts: str) -> _Token:
        tok = self.peek()
        if tok is None or (texts and tok.text not in texts):
            raise self.unexpected()
        self.i += 1
        return tok

    def take_id(self) -> str:
        tok = self.peek()
        if tok is None or tok.kind != "id":
            raise self.unexpected()
        self.i += 1
        return tok.text

    def unexpected(self) -> NotConvertible:
        tok = self.peek()
        if tok is None:
            return NotConvertible("up() ends unexpectedly")
        if tok.text in _LOOPS:
            return NotConvertible(f"up() has a loop ({tok.text}); only dbquery(dbid, \"...\", NULL) calls can be converted", tok.line)
        if tok.text == "if":
            return NotConvertible("up() has a condition other than 'if (!dbresult_ok(result)) return 0'", tok.line)
        nxt = self.peek(1)
        if tok.kind == "id" and nxt is not None and nxt.text == "(" and tok.text not in ("dbquery", "dbqueryf"):
            return NotConvertible(f"up() calls {tok.text}(); only dbquery(dbid, \"...\", NULL) calls can be converted", tok.line)
        return NotConvertible(f"up() does more than run SQL (at {tok.text!r})", tok.line)

    def parse(self) -> None:
        while self.peek() is not None:
            self.statement()

    def statement(self) -> None:
        tok = self.peek()
        assert tok is not None
        if tok.text == ";":
            self.i += 1
        elif tok.text == "dbresult_t":
            self.i += 1
            self.take("*")
            self.take_id()
            self.take("=")
            self.call()
            self.take(";")
        elif tok.text == "int" and self.peek(2) is not None and self.peek(2).text == "=":  # type: ignore[union-attr]
            self.i += 1
            self.take_id()
            self.take("=")
            self.ok_expr()
            self.take(";")
        elif tok.text == "dbresult_free":
            self.i += 1
            self.take("(")
            if self.peek() is not None and self.peek().text in ("dbquery", "dbqueryf"):  # type: ignore[union-attr]
                self.call()
            else:
                self.take_id()
            self.take(")")
            self.take(";")
        elif tok.text in ("dbquery", "dbqueryf"):
            self.call()
            self.take(";")
        elif tok.text == "return":
            self.i += 1
            value = self.peek()
            if value is not None and value.kind == "num":
                if value.text in ("0", "0u", "0U"):
                    raise NotConvertible("up() returns 0: the C tool treats it as failed", value.line)
                self.i += 1
            elif value is not None and value.text == "dbresult_ok":
                self.ok_expr()
            else:
                self.take_id()
            self.take(";")
        elif tok.text == "if":
            self.failure_check()
        elif tok.kind == "id" and self.peek(1) is not None and self.peek(1).text == "=":  # type: ignore[union-attr]
            self.i += 2
            if self.peek() is not None and self.peek().text == "dbresult_ok":  # type: ignore[union-attr]
                self.ok_expr()
            else:
                self.call()
            self.take(";")
        else:
            raise self.unexpected()

    def ok_expr(self) -> None:
        self.take("dbresult_ok")
        self.take("(")
        self.take_id()
        self.take(")")

    def failure_check(self) -> None:
        """``if (!dbresult_ok(r)) { dbresult_free(r); return 0; }``: stop at a failed query, as a SQL file does."""
        start = self.i
        try:
            self.take("if")
            self.take("(")
            self.take("!")
            if self.peek() is not None and self.peek().text == "dbresult_ok":  # type: ignore[union-attr]
                self.ok_expr()
            else:
                self.take_id()
            self.take(")")
            braced = self.peek() is not None and self.peek().text == "{"  # type: ignore[union-attr]
            if braced:
                self.take("{")
            while self.peek() is not None and self.peek().text == "dbresult_free":  # type: ignore[union-attr]
                self.take("dbresult_free")
                self.take("(")
                self.take_id()
                self.take(")")
                self.take(";")
            self.take("return")
            self.take("0")
            self.take(";")
            if braced:
                self.take("}")
        except NotConvertible:
            self.i = start
            raise NotConvertible("up() has a condition other than 'if (!dbresult_ok(result)) return 0'", self.t[start].line) from None

    def call(self) -> None:
        name = self.take("dbquery", "dbqueryf")
        self.take("(")
        if self.take_id() != self.dbid:
            raise NotConvertible(f"{name.text}() is sent to another database than up()'s {self.dbid}", name.line)
        self.take(",")
        literals = []
        while self.peek() is not None and self.peek().kind == "str":  # type: ignore[union-attr]
            literals.append(self.take())
        if not literals:
            raise NotConvertible(f"{name.text}()'s SQL is not a string literal (built at run time)", name.line)
        if name.text == "dbquery":
            self.take(",")
            params = self.peek()
            if params is None or params.text not in ("NULL", "0", "nullptr"):
                raise NotConvertible("dbquery() passes query parameters; port it by hand (e.g. a .py migration)", name.line)
            self.i += 1
        self.take(")")
        try:
            sql = b"".join(_literal_bytes(t) for t in literals).decode("utf-8")
        except UnicodeDecodeError:
            raise NotConvertible("the SQL is not valid UTF-8", name.line) from None
        if name.text == "dbqueryf":
            # a format string: %% is a %, any other conversion needs arguments the call does not pass
            if re.search(r"%[^%]", sql.replace("%%", "")):
                raise NotConvertible("dbqueryf()'s SQL has a printf conversion; port it by hand", name.line)
            sql = sql.replace("%%", "%")
        self.sql.append((sql, name.line))


def convert(source: str) -> list[str]:
    """The SQL statements a C migration's ``up`` sends, in order; NotConvertible otherwise."""
    tokens = _tokens(source)
    i = 0
    body: list[_Token] | None = None
    dbid = ""
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "pp":
            if not re.match(r"#\s*include\b", tok.text):
                raise NotConvertible(f"preprocessor directive {tok.text.split()[0]!r} (only #include is understood)", tok.line)
            i += 1
            continue
        # a function definition: <type words> name ( params ) { body }
        j = i
        while j < len(tokens) and tokens[j].text not in ("(", ";", "{", "="):
            j += 1
        if j >= len(tokens) or tokens[j].text != "(" or j == i or tokens[j - 1].kind != "id":
            raise NotConvertible("only #include lines and an up() function are understood at file level", tok.line)
        name = tokens[j - 1].text
        close = j
        while close < len(tokens) and tokens[close].text != ")":
            close += 1
        params = [t.text for t in tokens[j + 1:close]]
        if close + 1 >= len(tokens) or tokens[close + 1].text != "{":
            raise NotConvertible(f"{name}() is declared but not defined here", tok.line)
        depth, k = 0, close + 1
        while k < len(tokens):
            depth += {"{": 1, "}": -1}.get(tokens[k].text, 0)
            if depth == 0:
                break
            k += 1
        if k >= len(tokens):
            raise NotConvertible(f"{name}() has no closing brace", tok.line)
        header = [t.text for t in tokens[i:j - 1]]
        if name == "up":
            if header != ["int"] or params[:3] != ["const", "char", "*"] or len(params) != 4:
                raise NotConvertible("up() is not 'int up(const char* dbid)'", tok.line)
            dbid = params[3]
            body = tokens[close + 2:k]
        elif name != "down":  # the old templates' down() never runs: migrations are forward-only
            raise NotConvertible(f"defines {name}() besides up(); port it by hand", tok.line)
        i = k + 1
    if body is None:
        raise NotConvertible("defines no 'int up(const char* dbid)'")
    parser = _Body(body, dbid)
    parser.parse()
    statements = [sql for sql, _line in parser.sql if sql.strip()]
    if not statements:
        raise NotConvertible("up() sends no SQL (an untouched template?)")
    return statements


def _sql_file(name: str, statements: list[str]) -> str:
    parts = [f"-- Converted from {name} by 'orchestrator import-c': the SQL its up() sent, one statement per dbquery call.\n"]
    for sql in statements:
        text = sql.strip()
        if not text.endswith(";"):  # on its own line when a trailing line comment would swallow it
            text += ";" if sqlite3.complete_statement(text + ";") else "\n;"
        parts.append(text + "\n")
    return "".join(parts)


def import_dir(src: Path, dest: Path, force: bool = False) -> tuple[list[str], list[str]]:
    """Convert every ``*.c`` in ``src``; returns (lines for what was written, one line per file not converted)."""
    if not src.is_dir():
        raise ConfigError(f"import-c: {src} is not a folder")
    sources = sorted(p for p in src.iterdir() if p.name.endswith(".c") and p.is_file())
    if not sources:
        raise ConfigError(f"import-c: {src} holds no .c migration")
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"import-c: {dest} is not a folder")
    done: list[str] = []
    failed: list[str] = []
    for path in sources:
        target = dest / (path.name[:-2] + ".sql")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            failed.append(f"{path}: not UTF-8 (byte {exc.start}); not converted")
            continue
        except OSError as exc:
            failed.append(f"{path}: cannot read: {exc.strerror}")
            continue
        try:
            statements = convert(text)
        except NotConvertible as exc:
            where = f"{path}:{exc.line}" if exc.line else str(path)
            failed.append(f"{where}: not converted: {exc}")
            continue
        content = _sql_file(path.name, statements)
        if target.exists() and not force:
            if target.is_file() and target.read_bytes() == content.encode("utf-8"):
                done.append(f"{path.name} -> {target} (already there, unchanged)")
            else:
                failed.append(f"{path}: not converted: {target} exists and differs; remove it or pass --force")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        done.append(f"{path.name} -> {target} ({len(statements)} statement{'s' if len(statements) != 1 else ''})")
    return done, failed
