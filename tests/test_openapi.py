"""The published OpenAPI file must be what the code serves, and keep the contract's names."""

from __future__ import annotations

from quaygate.openapi_export import PATH, generate, render


def test_openapi_file_matches_the_code() -> None:
    assert PATH.exists(), "run `make openapi` to create openapi/openapi.json"
    assert PATH.read_text() == render(generate()), "openapi/openapi.json drifted: run `make openapi` and commit it"


def test_contract_routes_and_operation_ids_are_stable() -> None:
    spec = generate()
    ops = {(path, method): op.get("operationId") for path, item in spec["paths"].items() for method, op in item.items()}
    expected = {
        ("/api/v1/releases", "post"): "issueRelease",
        ("/api/v1/releases:batch", "post"): "issueReleaseBatch",
        ("/api/v1/releases", "get"): "listReleases",
        ("/api/v1/releases/{release_id}", "get"): "getRelease",
        ("/api/v1/releases/{release_id}/events", "get"): "listReleaseEvents",
        ("/api/v1/releases/{release_id}/transfers", "post"): "transferRelease",
        ("/api/v1/transfers/{transfer_id}/accept", "post"): "acceptTransfer",
        ("/api/v1/transfers/{transfer_id}/decline", "post"): "declineTransfer",
        ("/api/v1/transfers/{transfer_id}/withdraw", "post"): "withdrawTransfer",
        ("/api/v1/releases/{release_id}/nomination", "put"): "nominateDriver",
        ("/api/v1/releases/{release_id}/nomination:accept", "post"): "acceptNomination",
        ("/api/v1/releases/{release_id}/nomination:refuse", "post"): "refuseNomination",
        ("/api/v1/releases/{release_id}/block", "post"): "blockRelease",
        ("/api/v1/releases/{release_id}/unblock", "post"): "unblockRelease",
        ("/api/v1/releases/{release_id}/revoke", "post"): "revokeRelease",
        ("/api/v1/releases/{release_id}/lights/{light}", "put"): "setLight",
    }
    for key, op_id in expected.items():
        assert ops.get(key) == op_id, key


def test_every_write_declares_problem_responses() -> None:
    spec = generate()
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in item.items():
            if method in ("post", "put", "patch", "delete"):
                assert {"401", "403", "422"} <= set(op["responses"]), (method, path)
                assert "application/problem+json" in op["responses"]["422"]["content"], (method, path)
