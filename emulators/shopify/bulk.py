"""Bulk operations: `bulkOperationRunQuery` validated against Shopify's bulk rules, a timeline on the clock
(CREATED → RUNNING → COMPLETED, or a configured FAILED/CANCELED/EXPIRED), and the JSONL result generated on the fly
from a snapshot of product references, each nested connection's nodes a line of their own with `__parentId`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    OperationType,
    SelectionSetNode,
    get_named_type,
    get_operation_ast,
    is_abstract_type,
    is_leaf_type,
    parse,
    validate,
)

from emulators.shopify.cost import CostCalculator, argument, is_connection
from emulators.shopify.ids import gid
from emulators.shopify.products import Product
from emulators.shopify.schema import SCHEMA
from emulators.shopify.search import ProductFilter, SearchQueryError
from emulators.shopify.store import SORT_KEYS
from emulators.shopify.views import Connection, Fields, Node, register

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

# Bulk operation ids look like the real ones.
BULK_ID_BASE = 4_046_733_967_549
# Products projected at a time when generating a bulk export: bounds memory to one chunk.
BULK_CHUNK = 100
BULK_STATUSES_FINAL = {"COMPLETED", "FAILED", "CANCELED", "EXPIRED"}
BULK_FAULT_STATUSES = {"FAILED", "CANCELED", "EXPIRED"}
BULK_ERROR_CODES = {"ACCESS_DENIED", "INTERNAL_SERVER_ERROR", "TIMEOUT"}


@dataclass
class BulkOperation:
    """One bulk query: its validated document, the snapshot of product references it exports, and its timeline."""

    id: int
    query: str
    document: DocumentNode
    refs: list[int | Product]
    created_at: float
    url_base: str
    # Children directly after their parent (`groupObjects: true`), or not.
    grouped: bool = True
    status: str = "CREATED"
    error_code: str | None = None
    completed_at: float | None = None
    object_count: int = 0
    file_size: int = 0
    counted: threading.Event = field(default_factory=threading.Event)

    @property
    def gid(self) -> str:
        return gid("BulkOperation", self.id)

    @property
    def running(self) -> bool:
        return self.status in {"CREATED", "RUNNING", "CANCELING"}


register("BulkOperation", BulkOperation)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where the nested connections are in a node's result: response key → the plan of their nodes."""

    connections: dict[str, _Plan]


class BulkOperations:
    """bulkOperationRunQuery and its timeline: CREATED → RUNNING → COMPLETED (or the configured fault)."""

    def __init__(self, shop: Shop) -> None:
        self._shop = shop
        self._lock = threading.Lock()
        self.operations: list[BulkOperation] = []
        self.duration = 2.0
        self.fault: tuple[str, str | None] | None = None

    def current(self) -> BulkOperation | None:
        with self._lock:
            op = self.operations[-1] if self.operations else None
        if op is not None:
            self.advance(op)
        return op

    def get(self, op_id: int) -> BulkOperation | None:
        with self._lock:
            op = next((o for o in self.operations if o.id == op_id), None)
        if op is not None:
            self.advance(op)
        return op

    def advance(self, op: BulkOperation) -> None:
        """Move `op` along its timeline to where the clock says it is (a fault set meanwhile ends it)."""
        now = self._shop.clock()
        with self._lock:
            if op.status == "CANCELING":
                op.status, op.completed_at = "CANCELED", now
                return
            if op.status in BULK_STATUSES_FINAL:
                return
            if now < op.created_at + min(0.5, self.duration / 4):
                return
            op.status = "RUNNING"
            if now < op.created_at + self.duration or not op.counted.is_set():
                return
            if self.fault is not None:
                op.status, op.error_code = self.fault
            else:
                op.status = "COMPLETED"
            op.completed_at = now

    def start(
        self, query: str, url_base: str, *, grouped: bool = True
    ) -> tuple[BulkOperation | None, list[dict[str, Any]]]:
        running = self.current()
        if running is not None and running.running:
            message = f"A bulk query operation for this app and shop is already in progress: {running.gid}."
            return None, [{"field": None, "message": message, "code": "OPERATION_IN_PROGRESS"}]
        try:
            document, products_field = self._check(query)
        except ValueError as exc:
            return None, [{"field": ["query"], "message": str(exc), "code": "INVALID"}]
        sort: Any = argument(products_field, "sortKey", {}) or "ID"
        if sort not in SORT_KEYS:
            return None, [{"field": ["query"], "message": f"sortKey {sort} is not supported here.", "code": "INVALID"}]
        try:
            product_filter = ProductFilter.parse(argument(products_field, "query", {}))
        except SearchQueryError as exc:
            return None, [{"field": ["query"], "message": str(exc), "code": "INVALID"}]
        store = self._shop.store
        ids = store.matching_ids(
            sort, reverse=bool(argument(products_field, "reverse", {})), product_filter=product_filter
        )
        with self._lock:
            op = BulkOperation(
                id=BULK_ID_BASE + len(self.operations) * 97,
                query=query,
                document=document,
                refs=store.snapshot(ids),
                created_at=self._shop.clock(),
                url_base=url_base,
                grouped=grouped,
            )
            self.operations.append(op)
        threading.Thread(target=self._count, args=(op,), name=f"bulk-count-{op.id}", daemon=True).start()
        return op, []

    def cancel(self, op_id: int) -> tuple[BulkOperation | None, list[dict[str, Any]]]:
        op = self.get(op_id)
        if op is None:
            return None, [{"field": ["id"], "message": "Bulk operation does not exist"}]
        with self._lock:
            if op.status in BULK_STATUSES_FINAL:
                return op, [
                    {"field": ["id"], "message": f"A bulk operation cannot be canceled when it is {op.status.lower()}"}
                ]
            op.status = "CANCELING"
        return op, []

    def _check(self, query: str) -> tuple[DocumentNode, FieldNode]:
        """Shopify's bulk query rules (the subset we enforce); ValueError carries the user error message."""
        try:
            document = parse(query)
        except GraphQLError as exc:
            raise ValueError(f"Invalid bulk query: {exc.message}") from exc
        errors = validate(SCHEMA, document)
        if errors:
            raise ValueError(f"Invalid bulk query: {errors[0].message}")
        operation = get_operation_ast(document)
        if operation is None or operation.operation != OperationType.QUERY:
            raise ValueError("Invalid bulk query: it must be a single query operation.")
        calculator = CostCalculator(SCHEMA, document, {})
        root = SCHEMA.query_type
        assert root is not None
        top = calculator.collect(root, [operation.selection_set])
        connections = [nodes for nodes in top.values() if nodes[0].name.value == "products"]
        if not connections:
            raise ValueError("Bulk queries must contain at least one connection.")
        if len(top) != 1:
            raise ValueError("The emulator's bulk queries may only select the top-level `products` connection.")
        products_field = connections[0][0]
        self._plan(calculator, SCHEMA.get_type("ProductConnection"), connections[0], "products")
        return document, products_field

    def _plan(self, calculator: CostCalculator, connection: Any, nodes: Sequence[FieldNode], name: str) -> _Plan:
        """The nested-connection layout under a connection's nodes, checking each parent selects `id`."""
        node_type = get_named_type(connection.fields["nodes"].type)
        node_sets = _node_selection_sets(calculator, connection, nodes)
        runtimes = SCHEMA.get_possible_types(node_type) if is_abstract_type(node_type) else [node_type]
        nested: dict[str, _Plan] = {}
        selects_id = False
        for runtime in runtimes:
            for key, field_nodes in calculator.collect(runtime, node_sets).items():
                field_name = field_nodes[0].name.value
                selects_id = selects_id or (field_name == "id" and key == "id")
                if field_name.startswith("__"):
                    continue
                named = get_named_type(runtime.fields[field_name].type)
                if is_connection(named):
                    nested[key] = self._plan(calculator, named, field_nodes, field_name)
        if nested and not selects_id:
            raise ValueError(
                f"The parent 'node' field for a nested connection must select the 'id' field. "
                f"Connection fields without 'id': {name}."
            )
        return _Plan(nested)

    def lines(self, op: BulkOperation) -> Iterator[bytes]:
        """The JSONL result, generated a chunk of products at a time (memory bounded by one chunk).

        The query was validated when the operation started, so it is compiled once into a projection and applied
        to the same records through the same field resolver as the GraphQL endpoint: graphql-core's executor would
        cost a millisecond or more per product, minutes for a large shop.
        """
        operation = get_operation_ast(op.document)
        assert operation is not None and SCHEMA.query_type is not None
        calculator = CostCalculator(SCHEMA, op.document, {})
        (nodes,) = calculator.collect(SCHEMA.query_type, [operation.selection_set]).values()
        connection_type = SCHEMA.get_type("ProductConnection")
        assert connection_type is not None
        plan = self._plan(calculator, connection_type, nodes, "products")
        projection = _compile(calculator, connection_type, [n.selection_set for n in nodes if n.selection_set])
        store, resolver = self._shop.store, Fields(self._shop.domain, bulk=True)
        for start in range(0, len(op.refs), BULK_CHUNK):
            products = [p for p in (store.resolve(ref) for ref in op.refs[start : start + BULK_CHUNK]) if p is not None]
            product_nodes = [Node("Product", p) for p in products]
            page = Connection(product_nodes, [(p.id, p.id) for p in products], False, False)
            out: list[str] = []
            # Ungrouped output puts a chunk's children before their parents: the worst order a reader must take.
            children: list[str] = out if op.grouped else []
            for node in _connection_nodes(_project(page, projection, resolver)):
                _flatten(node, plan, None, out, children)
            if not op.grouped:
                out = children + out
            if out:
                yield ("\n".join(out) + "\n").encode()

    def _count(self, op: BulkOperation) -> None:
        """Counts objects and bytes while the operation is RUNNING, as Shopify reports both when it completes."""
        objects = size = 0
        try:
            for chunk in self.lines(op):
                objects += chunk.count(b"\n")
                size += len(chunk)
        except Exception:  # the operation fails like a real one would; the shop keeps serving
            with self._lock:
                op.status, op.error_code, op.completed_at = "FAILED", "INTERNAL_SERVER_ERROR", self._shop.clock()
        op.object_count, op.file_size = objects, size
        op.counted.set()

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            ops = list(self.operations)
        for op in ops:
            self.advance(op)
        return [
            {
                "id": op.gid,
                "status": op.status,
                "errorCode": op.error_code,
                "objectCount": op.object_count,
                "rootObjectCount": len(op.refs),
                "fileSize": op.file_size,
            }
            for op in ops
        ]


@dataclass(frozen=True, slots=True)
class _Projected:
    key: str
    name: str
    args: dict[str, Any]
    child: _Projection | None


@dataclass(frozen=True, slots=True)
class _Projection:
    """A compiled selection set: the fields to read for each possible runtime type."""

    by_type: dict[str, tuple[_Projected, ...]]


def _compile(calculator: CostCalculator, named: Any, sets: Sequence[SelectionSetNode]) -> _Projection:
    runtimes = SCHEMA.get_possible_types(named) if is_abstract_type(named) else [named]
    by_type: dict[str, tuple[_Projected, ...]] = {}
    for runtime in runtimes:
        fields: list[_Projected] = []
        for key, nodes in calculator.collect(runtime, sets).items():
            name = nodes[0].name.value
            if name == "__typename":
                fields.append(_Projected(key, name, {}, None))
                continue
            child_type = get_named_type(runtime.fields[name].type)
            args = {a.name.value: argument(nodes[0], a.name.value, {}) for a in nodes[0].arguments or ()}
            child = None
            if not is_leaf_type(child_type):
                child = _compile(calculator, child_type, [n.selection_set for n in nodes if n.selection_set])
            fields.append(_Projected(key, name, args, child))
        by_type[runtime.name] = tuple(fields)
    return _Projection(by_type)


def _project(value: Any, projection: _Projection, resolver: Fields) -> dict[str, Any]:
    """What graphql-core would return for `value` under a compiled selection, resolved by the same `Fields`."""
    if len(projection.by_type) == 1:
        ((typename, fields),) = projection.by_type.items()
    else:
        typename = value.typename
        fields = projection.by_type[typename]
    out: dict[str, Any] = {}
    for field_ in fields:
        if field_.name == "__typename":
            out[field_.key] = typename
            continue
        raw = resolver.read(value, typename, field_.name, field_.args)
        child = field_.child
        if raw is None:
            out[field_.key] = None
        elif child is None:
            # Records keep lists as tuples (`tags`); graphql-core answers lists, and so does the export.
            out[field_.key] = list(raw) if isinstance(raw, tuple) else raw
        elif isinstance(raw, list):
            out[field_.key] = [_project(item, child, resolver) for item in raw]
        else:
            out[field_.key] = _project(raw, child, resolver)
    return out


def _node_selection_sets(
    calculator: CostCalculator, connection: Any, nodes: Sequence[FieldNode]
) -> list[SelectionSetNode]:
    sets = [n.selection_set for n in nodes if n.selection_set is not None]
    out: list[SelectionSetNode] = []
    for field_nodes in calculator.collect(connection, sets).values():
        name = field_nodes[0].name.value
        inner = [n.selection_set for n in field_nodes if n.selection_set is not None]
        if name == "nodes":
            out.extend(inner)
        elif name == "edges":
            edge_type = get_named_type(connection.fields["edges"].type)
            for edge_nodes in calculator.collect(edge_type, inner).values():
                if edge_nodes[0].name.value == "node":
                    out.extend(n.selection_set for n in edge_nodes if n.selection_set is not None)
    return out


def _connection_nodes(value: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not value:
        return []
    edges = value.get("edges")
    if edges is not None:
        return [edge["node"] for edge in edges if edge.get("node") is not None]
    return list(value.get("nodes") or [])


def _flatten(node: Mapping[str, Any], plan: _Plan, parent_id: str | None, out: list[str], children: list[str]) -> None:
    """One JSONL line for `node` into `out`, then its nested connections' nodes into `children`."""
    line = {key: value for key, value in node.items() if key not in plan.connections}
    if parent_id is not None:
        line["__parentId"] = parent_id
    out.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    for key, child_plan in plan.connections.items():
        for child in _connection_nodes(node.get(key)):
            _flatten(child, child_plan, node.get("id"), children, children)



def parse_fault(value: Any) -> tuple[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("status"), str):
        raise ValueError('bulk_fault must be null or {"status": "FAILED|CANCELED|EXPIRED", "error_code": ...}')
    status = value["status"].upper()
    if status not in BULK_FAULT_STATUSES:
        raise ValueError(f"bulk_fault.status must be one of {sorted(BULK_FAULT_STATUSES)}")
    code = value.get("error_code", "INTERNAL_SERVER_ERROR" if status == "FAILED" else None)
    if code is not None and code not in BULK_ERROR_CODES:
        raise ValueError(f"bulk_fault.error_code must be null or one of {sorted(BULK_ERROR_CODES)}")
    return status, code
