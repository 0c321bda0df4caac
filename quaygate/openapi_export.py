"""Write the published API description to openapi/openapi.json (``make openapi``).

The test suite regenerates it and fails when the file and the code disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .app import create_app
from .settings import Settings

PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def generate() -> dict[str, Any]:
    app = create_app(Settings(background_workers=False))
    return app.openapi()


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main() -> int:
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(render(generate()))
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
