"""The one validated model of runtime configuration (grows with the routing and limits issues)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from router_impl.auth.keys import ApiKeyRecord


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: tuple[ApiKeyRecord, ...] = ()

    @model_validator(mode="after")
    def _unique_keys(self) -> RuntimeConfig:
        ids = [k.id for k in self.api_keys]
        hashes = [k.key_hash for k in self.api_keys]
        if len(set(ids)) != len(ids):
            raise ValueError("api_keys: duplicate key id")
        if len(set(hashes)) != len(hashes):
            raise ValueError("api_keys: duplicate key hash")
        return self
