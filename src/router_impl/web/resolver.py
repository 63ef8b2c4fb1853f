"""Resolves operationIds through the generated table and binds handlers to the app's components
and the current request.

A handler is ``handler(components, request, **parameters)``: ``request`` is the frozen
``RequestContext`` (``web/current.py``), the parameters are what Connexion binds (path and query
parameters, ``token_info``). ``bound`` gives the fast lane the handler with its components, to
call with the context it builds from the scope it holds; ``handler_for`` gives Connexion the same
with ``request`` filled in from the current scope -- the one read of the context variable.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from connexion.resolver import Resolver
from connexion.utils import get_function_from_name
from router_contract.operations import Operation

from router_impl.components import Components
from router_impl.web.current import CURRENT_SCOPE, request_context

Handler = Callable[..., Awaitable[Any]]


def with_current_request(bound: Handler) -> Handler:
    """``bound`` (taking ``request`` first) as Connexion calls it: the signature Connexion inspects
    names only the parameters it binds, and ``request`` is built from the current scope."""
    parameters = list(inspect.signature(bound).parameters.values())
    if not parameters or parameters[0].name != "request":
        raise TypeError(f"{bound}: a handler takes (components, request, ...)")

    async def handler(**arguments: Any) -> Any:
        return await bound(request_context(CURRENT_SCOPE.get()), **arguments)

    handler.__signature__ = inspect.Signature(parameters[1:])  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = getattr(getattr(bound, "func", bound), "__name__", "handler")
    return handler


class OperationTableResolver(Resolver):  # type: ignore[misc]
    def __init__(self, operations: Mapping[str, Operation], components: Components) -> None:
        super().__init__(function_resolver=self.handler_for)
        self.operations = operations
        self.components = components

    def bound(self, operation_id: str) -> Handler:
        """The operation's handler with its components: ``bound(request, **parameters)``."""
        handler: Handler = get_function_from_name(self.operations[operation_id].handler)
        return partial(handler, self.components)

    def handler_for(self, operation_id: str) -> Handler:
        operation = self.operations[operation_id]
        if operation.stub:
            handler: Handler = get_function_from_name(operation.handler)
            return handler  # the generated 501
        return with_current_request(self.bound(operation_id))
