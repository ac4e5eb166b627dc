"""PostgreSQL rules, read from the real PostgreSQL parse tree (pglast, libpg_query).

Each statement that :mod:`orchestrator.sqlsplit` cuts out of the file is parsed on its
own; a statement the parser refuses is left for the server to report. Tables created
earlier in the same file are new and empty, so statements on them are not flagged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.lint.rules import Hit
from orchestrator.sqlsplit import split

__all__ = ["SetMemory", "check"]

# Functions whose value differs per row: a default using one makes ADD COLUMN rewrite the table.
_VOLATILE = frozenset({"random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
                       "clock_timestamp", "timeofday", "nextval", "txid_current", "pg_current_xact_id", "setseed"})
_SERIAL = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"})


@dataclass
class SetMemory:
    """What earlier files of the same set established: validated CHECK (col IS NOT NULL), column types."""

    not_null_checks: set[tuple[str, str]] = field(default_factory=set)
    column_types: dict[tuple[str, str], tuple[str, int | None]] = field(default_factory=dict)
    checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # CHECK (col IS NOT NULL) by constraint name


@dataclass
class _File:
    in_transaction: bool
    memory: SetMemory
    created: set[str] = field(default_factory=set)
    not_valid: set[str] = field(default_factory=set)
    new_enum_values: set[str] = field(default_factory=set)


def check(text: str, no_transaction: bool, memory: SetMemory | None = None) -> Iterator[Hit]:
    from pglast import ast, parse_sql

    state = _File(in_transaction=not no_transaction, memory=memory or SetMemory())
    for statement in split(text, "postgresql"):
        if statement.text.startswith("\\"):
            continue  # psql meta-command
        try:
            tree = parse_sql(statement.text)
        except Exception:
            continue  # not ours to report: the server names the syntax error
        for raw in tree:
            for rule_id, detail in _statement(raw.stmt, state, ast):
                yield Hit(rule_id, statement.line, statement.text, detail)


def _statement(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if state.new_enum_values and state.in_transaction and _uses_values(node, state.new_enum_values, ast):
        yield "enum-value-used", ""
    kind = type(node).__name__
    handler = _HANDLERS.get(kind)
    if handler is not None:
        yield from handler(node, state, ast)


def _uses_values(node: Any, values: set[str], ast: Any) -> bool:
    from pglast.visitors import Visitor

    found: list[bool] = []

    class _Constants(Visitor):
        def visit_A_Const(self, ancestors: Any, const: Any) -> None:
            if isinstance(const.val, ast.String) and const.val.sval in values:
                found.append(True)

    _Constants()(node)
    return bool(found)


def _transaction(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    from pglast.enums import TransactionStmtKind

    if node.kind in (TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK):
        state.new_enum_values.clear()
        state.not_valid.clear()
    return iter(())


def _create(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    state.created.add(node.relation.relname)
    for element in node.tableElts or ():
        if isinstance(element, ast.ColumnDef) and element.colname:
            state.memory.column_types[(node.relation.relname, element.colname)] = _type_of(element.typeName, ast)
    return iter(())


def _type_of(type_name: Any, ast: Any) -> tuple[str, int | None]:
    """(type name, first type modifier such as a varchar length, or None)."""
    if type_name is None:
        return ("", None)
    name = type_name.names[-1].sval
    mods = type_name.typmods or ()
    length = mods[0].val.ival if mods and isinstance(mods[0], ast.A_Const) and isinstance(mods[0].val, ast.Integer) else None
    return (name, length)


def _widens(old: tuple[str, int | None] | None, new: tuple[str, int | None]) -> bool:
    """varchar(n) or text to text, unbounded varchar or a longer varchar: binary-coercible, no rewrite."""
    if old is None or old[0] not in ("varchar", "text") or new[0] not in ("varchar", "text"):
        return False
    if new[0] == "text" or new[1] is None:
        return True
    return old[0] == "varchar" and old[1] is not None and old[1] <= new[1]


def _create_as(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    state.created.add(node.into.rel.relname)
    return iter(())


def _index(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if node.concurrent and state.in_transaction:
        yield "concurrently-in-transaction", ""
    elif not node.concurrent and node.relation.relname not in state.created:
        yield "index-not-concurrent", f"on {node.relation.relname}"


def _drop(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    from pglast.enums import ObjectType

    if node.concurrent and state.in_transaction:
        yield "concurrently-in-transaction", ""
    if node.removeType == ObjectType.OBJECT_TABLE:
        names = [obj[-1].sval for obj in node.objects or () if isinstance(obj, tuple) and isinstance(obj[-1], ast.String)]
        dropped = [n for n in names if n not in state.created]
        if dropped:
            yield "drop-table", ", ".join(dropped)


def _reindex(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    concurrent = any(getattr(p, "defname", "") == "concurrently" for p in node.params or ())
    if concurrent and state.in_transaction:
        yield "concurrently-in-transaction", ""
    elif not concurrent and not (node.relation is not None and node.relation.relname in state.created):
        yield "reindex-not-concurrent", ""


def _vacuum(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if node.is_vacuumcmd and any(getattr(o, "defname", "") == "full" for o in node.options or ()):
        yield "vacuum-full", ""


def _cluster(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if not (node.relation is not None and node.relation.relname in state.created):
        yield "cluster", ""


def _lock(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if any(r.relname not in state.created for r in node.relations or ()):
        yield "lock-table", ""


def _rename(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    from pglast.enums import ObjectType

    if node.relation is not None:  # column types follow their table and column to the new names
        old, types = node.relation.relname, state.memory.column_types
        for (table, column) in list(types):
            if table == old and node.renameType == ObjectType.OBJECT_TABLE:
                types[(node.newname, column)] = types.pop((table, column))
            elif table == old and node.renameType == ObjectType.OBJECT_COLUMN and column == node.subname:
                types[(table, node.newname)] = types.pop((table, column))
    if node.renameType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_COLUMN) and node.relation is not None:
        if node.relation.relname not in state.created:
            yield "rename", f"{node.relation.relname}{'.' + node.subname if node.subname else ''} to {node.newname}"
        elif node.renameType == ObjectType.OBJECT_TABLE:
            state.created.add(node.newname)


def _enum(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    if node.newVal and state.in_transaction:
        state.new_enum_values.add(node.newVal)
    return iter(())


def _alter_table(node: Any, state: _File, ast: Any) -> Iterator[tuple[str, str]]:
    from pglast.enums import AlterTableType as T
    from pglast.enums import ConstrType as C

    table = node.relation.relname
    new = table in state.created
    for cmd in node.cmds or ():
        if cmd.subtype == T.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            con = cmd.def_
            if con.contype in (C.CONSTR_FOREIGN, C.CONSTR_CHECK):
                if con.skip_validation:
                    if con.conname:
                        state.not_valid.add(con.conname)
                elif not new:
                    yield "constraint-not-valid", f"on {table}"
                column = _not_null_column(con, ast) if con.contype == C.CONSTR_CHECK else None
                if column and con.conname:
                    state.memory.checks[con.conname] = (table, column)
                    if not con.skip_validation:
                        state.memory.not_null_checks.add((table, column))
            elif con.contype in (C.CONSTR_PRIMARY, C.CONSTR_UNIQUE, C.CONSTR_EXCLUSION) and not new and not con.indexname:
                yield "unique-constraint", f"on {table}"
        elif cmd.subtype == T.AT_ValidateConstraint:
            if state.in_transaction and cmd.name in state.not_valid:
                yield "validate-same-transaction", cmd.name
            if cmd.name in state.memory.checks:
                state.memory.not_null_checks.add(state.memory.checks[cmd.name])
        elif cmd.subtype == T.AT_AlterColumnType:
            wanted = _type_of(cmd.def_.typeName, ast)
            if not new and not (cmd.def_.raw_default is None and _widens(state.memory.column_types.get((table, cmd.name)), wanted)):
                yield "column-type-rewrite", f"{table}.{cmd.name}"
            state.memory.column_types[(table, cmd.name)] = wanted
        elif cmd.subtype == T.AT_SetNotNull and not new and (table, cmd.name) not in state.memory.not_null_checks:
            yield "set-not-null", f"{table}.{cmd.name}"
        elif cmd.subtype == T.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            state.memory.column_types[(table, cmd.def_.colname)] = _type_of(cmd.def_.typeName, ast)
            if not new and _rewrites(cmd.def_, ast):
                yield "volatile-default", f"{table}.{cmd.def_.colname}"
        elif cmd.subtype == T.AT_DropColumn and not new:
            yield "drop-column", f"{table}.{cmd.name}"


def _not_null_column(con: Any, ast: Any) -> str | None:
    """The column of ``CHECK (col IS NOT NULL)``, else None."""
    expr = con.raw_expr
    if isinstance(expr, ast.NullTest) and expr.nulltesttype == 1 and isinstance(expr.arg, ast.ColumnRef):  # IS_NOT_NULL
        last = expr.arg.fields[-1]
        return last.sval if isinstance(last, ast.String) else None
    return None


def _rewrites(column: Any, ast: Any) -> bool:
    from pglast.enums import ConstrType as C
    from pglast.visitors import Visitor

    type_name = column.typeName.names[-1].sval if column.typeName is not None else ""
    if type_name in _SERIAL:
        return True
    volatile: list[bool] = []

    class _Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, call: Any) -> None:
            if call.funcname[-1].sval.lower() in _VOLATILE:
                volatile.append(True)

    for con in column.constraints or ():
        if con.contype == C.CONSTR_IDENTITY or (con.contype == C.CONSTR_GENERATED and con.generated_kind == "s"):
            return True
        if con.contype == C.CONSTR_DEFAULT and con.raw_expr is not None:
            _Calls()(con.raw_expr)
    return bool(volatile)


_HANDLERS = {
    "TransactionStmt": _transaction,
    "CreateStmt": _create,
    "CreateTableAsStmt": _create_as,
    "IndexStmt": _index,
    "DropStmt": _drop,
    "ReindexStmt": _reindex,
    "VacuumStmt": _vacuum,
    "ClusterStmt": _cluster,
    "LockStmt": _lock,
    "RenameStmt": _rename,
    "AlterEnumStmt": _enum,
    "AlterTableStmt": _alter_table,
}
