"""Shopify's calculated query cost, computed from the parsed query before execution: scalars and enums 0, an object
1, a connection `2 + size × (1 + cost of one node)` (so nested connections multiply), an interface its most
expensive possible type, a mutation 10."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
    get_named_type,
    is_abstract_type,
    is_leaf_type,
    is_object_type,
)

from emulators.shopify.defaults import MAX_PAGE_SIZE

# A single query may cost at most this much, whatever the bucket (Shopify's documented limit).
MAX_QUERY_COST = 1_000
# Every mutation field costs this much, regardless of what it selects.
MUTATION_COST = 10


class QueryRejected(Exception):
    """A query refused before execution (bad paging arguments); becomes a top-level GraphQL error."""

    def __init__(self, message: str, nodes: Sequence[FieldNode] = ()) -> None:
        super().__init__(message)
        self.nodes = list(nodes)


def argument(node: FieldNode, name: str, variables: Mapping[str, Any]) -> Any:
    """The value of a field's argument as written in the query (a variable looked up), None when absent."""
    for given in node.arguments or ():
        if given.name.value != name:
            continue
        value = given.value
        if isinstance(value, VariableNode):
            return variables.get(value.name.value)
        if isinstance(value, IntValueNode):
            return int(value.value)
        if isinstance(value, StringValueNode | EnumValueNode):
            return value.value
        if isinstance(value, BooleanValueNode):
            return value.value
        return None
    return None


def included(node: FieldNode | InlineFragmentNode | FragmentSpreadNode, variables: Mapping[str, Any]) -> bool:
    for directive in node.directives or ():
        name = directive.name.value
        if name not in {"skip", "include"}:
            continue
        value: Any = None
        for argument in directive.arguments or ():
            if argument.name.value == "if":
                raw = argument.value
                value = variables.get(raw.name.value) if isinstance(raw, VariableNode) else getattr(raw, "value", None)
        if (name == "skip" and value is True) or (name == "include" and value is not True):
            return False
    return True


class CostCalculator:
    """Shopify's requested query cost for one operation (see the module docstring for the rules)."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any]) -> None:
        self.schema = schema
        self.variables = variables
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}

    def operation_cost(self, operation: OperationDefinitionNode) -> int:
        if operation.operation == OperationType.MUTATION:
            root = self.schema.mutation_type
            assert root is not None
            fields = self.collect(root, [operation.selection_set])
            return sum(MUTATION_COST for key, nodes in fields.items() if not nodes[0].name.value.startswith("__"))
        root = self.schema.query_type
        assert root is not None
        return self.selection_cost(root, [operation.selection_set])

    def _applies(self, condition: str | None, runtime: GraphQLObjectType) -> bool:
        if condition is None or condition == runtime.name:
            return True
        named = self.schema.get_type(condition)
        return named is not None and is_abstract_type(named) and self.schema.is_sub_type(named, runtime)

    def collect(self, runtime: GraphQLObjectType, sets: Iterable[SelectionSetNode]) -> dict[str, list[FieldNode]]:
        """Fields by response key, following fragments that apply to `runtime` (GraphQL's CollectFields)."""
        fields: dict[str, list[FieldNode]] = {}

        def visit(selection_set: SelectionSetNode, seen: set[str]) -> None:
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    if included(selection, self.variables):
                        key = selection.alias.value if selection.alias else selection.name.value
                        fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition.name.value if selection.type_condition else None
                    if included(selection, self.variables) and self._applies(condition, runtime):
                        visit(selection.selection_set, seen)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None or name in seen or not included(selection, self.variables):
                        continue
                    if self._applies(fragment.type_condition.name.value, runtime):
                        visit(fragment.selection_set, seen | {name})

        for selection_set in sets:
            visit(selection_set, set())
        return fields

    def selection_cost(self, parent: GraphQLObjectType, sets: Sequence[SelectionSetNode]) -> int:
        total = 0
        for nodes in self.collect(parent, sets).values():
            name = nodes[0].name.value
            if name.startswith("__"):
                continue
            total += self.field_cost(parent.fields[name], nodes)
        return total

    def composite_cost(self, named: GraphQLNamedType, sets: Sequence[SelectionSetNode]) -> int:
        """Children of an object; for an interface, the most expensive of its possible types."""
        if is_abstract_type(named):
            possible = self.schema.get_possible_types(named)
            return max((self.selection_cost(runtime, sets) for runtime in possible), default=0)
        assert is_object_type(named)
        return self.selection_cost(named, sets)

    def field_cost(self, definition: GraphQLField, nodes: Sequence[FieldNode]) -> int:
        named = get_named_type(definition.type)
        if is_leaf_type(named):
            return 0
        sets = [node.selection_set for node in nodes if node.selection_set is not None]
        if is_connection(named):
            assert isinstance(named, GraphQLObjectType)
            size = connection_size(nodes[0], self.variables)
            return 2 + size * (1 + self.node_cost(named, sets))
        return 1 + self.composite_cost(named, sets)

    def node_cost(self, connection: GraphQLObjectType, sets: Sequence[SelectionSetNode]) -> int:
        """One node's cost inside a connection, through `edges { node }` or `nodes` (the dearer of the two)."""
        fields = self.collect(connection, sets)
        node_type = get_named_type(connection.fields["nodes"].type)
        costs = [0]
        for field_nodes in fields.get("nodes", []), *(fields[k] for k in fields if k != "nodes"):
            if not field_nodes:
                continue
            name = field_nodes[0].name.value
            inner = [n.selection_set for n in field_nodes if n.selection_set is not None]
            if name == "nodes":
                costs.append(self.composite_cost(node_type, inner))
            elif name == "edges":
                edge_type = get_named_type(connection.fields["edges"].type)
                assert isinstance(edge_type, GraphQLObjectType)
                for edge_nodes in self.collect(edge_type, inner).values():
                    if edge_nodes[0].name.value == "node":
                        node_sets = [n.selection_set for n in edge_nodes if n.selection_set is not None]
                        costs.append(self.composite_cost(node_type, node_sets))
        return max(costs)


def is_connection(named: GraphQLNamedType) -> bool:
    return isinstance(named, GraphQLObjectType) and named.name.endswith("Connection") and "pageInfo" in named.fields


def connection_size(node: FieldNode, variables: Mapping[str, Any]) -> int:
    first = argument(node, "first", variables)
    last = argument(node, "last", variables)
    if first is None and last is None:
        raise QueryRejected("you must provide one of first or last", [node])
    for name, value in (("first", first), ("last", last)):
        if value is not None and not 0 <= value <= MAX_PAGE_SIZE:
            raise QueryRejected(
                f"The value of `{name}` for the `{node.name.value}` field must be between 0 and {MAX_PAGE_SIZE}.",
                [node],
            )
    return int(first if first is not None else last)
