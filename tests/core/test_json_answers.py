"""Answers are UTF-8 JSON written out (gateway.app.GatewayJSON): non-ASCII output costs 3
bytes a character instead of a 6-byte escape, the envelope reads msg-then-data, and an
answer holding a surrogate-escaped name falls back to escapes rather than failing."""
from __future__ import annotations

import json

from gateway.app import GatewayJSON


def test_job_output_in_cjk_and_invalid_utf8_is_sent_as_utf8(make_app):
    app, admin = make_app()
    text = "作业输出" * 1000
    job_id = admin.submit(command=f"printf '%s' '{text}'; printf '\\377\\376'")
    assert admin.wait_for(job_id, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    r = admin.get(f"/jobs/{job_id}/output", params={"limit": 1 << 20})
    assert r.status == 200
    assert r.body["data"]["output"]["data"] == text + "\ufffd\ufffd"
    assert text.encode() in r.raw and b"\\u" not in r.raw
    assert r.raw.startswith(b'{"msg":')
    # 12,000 bytes of CJK and two bad bytes: 12,006 bytes of data, not the 24,012 of escapes
    assert len(r.raw) < len(text.encode()) + 400


def test_an_answer_with_a_lone_surrogate_is_escaped_not_an_error(make_app):
    app, _ = make_app()
    with app.app_context():
        body = app.json.response({"name": "caf\udce9", "other": "作"}).get_data()
    assert json.loads(body) == {"name": "caf\udce9", "other": "作"}
    assert body == b'{"name":"caf\\udce9","other":"\\u4f5c"}\n'
    assert isinstance(app.json, GatewayJSON)
