"""Resolves operationIds through the generated table and binds handlers to the app's components."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from connexion.resolver import Resolver
from connexion.utils import get_function_from_name
from router_contract.operations import Operation

from router_impl.components import Components


class OperationTableResolver(Resolver):  # type: ignore[misc]
    def __init__(self, operations: Mapping[str, Operation], components: Components) -> None:
        super().__init__(function_resolver=self.handler_for)
        self.operations = operations
        self.components = components

    def handler_for(self, operation_id: str) -> Callable[..., Any]:
        operation = self.operations[operation_id]
        handler = get_function_from_name(operation.handler)
        return handler if operation.stub else partial(handler, self.components)
