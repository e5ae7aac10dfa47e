"""``GET /v1/me``: who is asking (the user behind the request's token), their role and the store's kind."""

from __future__ import annotations

from fastapi import APIRouter

from mucosa.service import schemas
from mucosa.service.dependencies import StoreDep, UserDep

__all__ = ["router"]

router = APIRouter(tags=["users"])


@router.get("/me", response_model=schemas.Me)
async def me(user: UserDep, store: StoreDep) -> dict:
    """The user making the request (``local``, an admin, on a server without users or token), their role
    (``viewer``, ``reviewer``, ``admin``) and the store's database (``sqlite`` or ``postgresql``)."""
    return {"name": user.name, "role": user.role.value, "store": {"backend": store.backend}}
