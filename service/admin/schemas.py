"""Request models of the admin API (pydantic): what each body and query may hold."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StringConstraints,
)

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
OptionalReason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
DurationText = Annotated[str, StringConstraints(pattern=r"^\s*\d+\s*[smhdw]\s*$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StockAdjustmentIn(Body):
    delta: StrictInt = Field(description="Units to add (positive) or remove (negative); not 0")
    reason: Reason


class RefundIn(Body):
    amount_cents: StrictInt = Field(gt=0, description="Amount to refund, in the order's "
                                    "currency's minor units")
    reason: Reason


class PaymentMethodAdd(Body):
    action: Literal["add"]
    provider: Literal["stripe", "paypal"]
    provider_ref: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                   max_length=255)]
    brand: Annotated[str, StringConstraints(max_length=32)] | None = None
    last4: Annotated[str, StringConstraints(pattern=r"^\d{4}$")] | None = None
    make_default: StrictBool = False
    reason: OptionalReason | None = None


class PaymentMethodSetDefault(Body):
    action: Literal["set_default"]
    payment_method_id: StrictInt
    reason: OptionalReason | None = None


class PaymentMethodRemove(Body):
    action: Literal["remove"]
    payment_method_id: StrictInt
    reason: OptionalReason | None = None


class PaymentMethodChangeIn(RootModel[Annotated[
        PaymentMethodAdd | PaymentMethodSetDefault | PaymentMethodRemove,
        Field(discriminator="action")]]):
    """One change: `add`, `set_default` or `remove` (the `action` field says which)."""


class RetryIn(Body):
    ids: list[StrictInt] | None = Field(default=None, min_length=1, max_length=1000,
                                        description="Failure ids (webhook_failures.id)")
    since: DurationText | None = Field(default=None, description="Failures updated within "
                                       "this window, e.g. 1h")
    provider: Literal["stripe", "paypal"] | None = None
    reason: OptionalReason | None = None


class UserIn(Body):
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=255)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    role: Literal["viewer", "operator", "admin"]


class DeactivateIn(Body):
    reason: OptionalReason | None = None


class TokenIn(Body):
    user: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] \
        | StrictInt = Field(description="The user's id or email")
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] = "api"
    expires_in: DurationText | None = Field(default=None, description="Lifetime, e.g. 30d")


class RevokeQuery(BaseModel):
    reason: OptionalReason | None = None


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity_type: Annotated[str, StringConstraints(max_length=64)] | None = None
    entity_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    actor: Annotated[str, StringConstraints(max_length=255)] | None = Field(
        default=None, description="An actor label, or a prefix ending in ':' or '*'")
    since: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        default=None, description="ISO date/time or a look-back like 2d")
    until: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        default=None, description="ISO date/time or a look-back like 1h")
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Annotated[str, StringConstraints(max_length=64)] | None = None


class FailuresQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: DurationText | None = None
    provider: Literal["stripe", "paypal"] | None = None
    include_resolved: bool = False
    limit: int = Field(default=100, ge=1, le=1000)


class IncidentsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["active", "open", "acknowledged", "resolved", "all"] = Field(
        default="active", description="active: open or acknowledged")
    severity: Literal["P0", "P1", "P2", "P3"] | None = None
    limit: int = Field(default=50, ge=1, le=200)
    before: int | None = Field(default=None, ge=1, description="Incidents with a smaller id: "
                               "pass the previous answer's `next_before` for the next page")


class AcknowledgeIn(Body):
    reason: OptionalReason | None = Field(default=None, description="What you are doing "
                                          "about it")


class ResolveIn(Body):
    reason: Reason = Field(description="What fixed it")


class ErpStatusQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=10, ge=1, le=200, description="How many of the latest runs")


class ErpPauseIn(Body):
    reason: Reason = Field(description="Why the sync is paused (shown in status, audited)")


class ErpResumeIn(Body):
    reason: OptionalReason | None = Field(default=None, description="What changed")
