"""(Being built in issue 3.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["identity"])
