"""``python -m gate_adapters --config lane.toml``: the gate adapter process (gate_adapters/adapter.py)."""

from gate_adapters.adapter import main

raise SystemExit(main())
