"""Wire models: E2B field names, unknown request fields ignored, optional fields omitted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shoal.wire.api.models import ListedSandbox, NewSandbox, Sandbox, SandboxDetail, to_wire


def test_new_sandbox_reads_e2b_names_and_ignores_unknown() -> None:
    body = NewSandbox.model_validate(
        {
            "templateID": "base",
            "timeout": 30,
            "envVars": {"A": "1"},
            "autoPause": True,
            "allow_internet_access": False,
            "volumeMounts": [{"name": "v", "path": "/v"}],
        }
    )
    assert (body.template_id, body.timeout, body.env_vars) == ("base", 30, {"A": "1"})
    assert body.auto_pause is True and body.allow_internet_access is False
    with pytest.raises(ValidationError):
        NewSandbox.model_validate({"templateID": ""})


def test_sandbox_keeps_null_traffic_token_but_drops_unset_alias() -> None:
    wire = to_wire(Sandbox(templateID="t", sandboxID="s", clientID="c", envdVersion="0.6.13"))
    assert wire == {
        "templateID": "t",
        "sandboxID": "s",
        "clientID": "c",
        "envdVersion": "0.6.13",
        "trafficAccessToken": None,
        "domain": None,
    }


def test_detail_timestamps_are_rfc3339_and_lifecycle_present() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    listed = ListedSandbox(
        templateID="t", sandboxID="s", clientID="c", startedAt=t, endAt=t,
        cpuCount=2, memoryMB=512, diskSizeMB=1024, state="running", envdVersion="0.6.13",
    )  # fmt: skip
    wire = to_wire(SandboxDetail(**listed.model_dump(by_alias=True)))
    assert datetime.fromisoformat(wire["startedAt"]) == t
    assert wire["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}
    assert "alias" not in wire and "envdAccessToken" not in wire
