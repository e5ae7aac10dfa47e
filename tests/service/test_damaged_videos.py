"""A case from a damaged video keeps what the decoder found: its warnings, and the frames the video announced
beside those decoded."""

import pytest

from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_damaged_videos_carry_their_decode_warnings(engine, brain_video, damaged):
    with serving(engine) as (client, root):
        cases = {path.name: wait_done(client, upload(client, "/v1/cases", path).json()["id"])
                 for path in (brain_video, damaged / "cut.mpg", damaged / "mid.mpg")}
        listed = {case["name"]: case for case in client.get("/v1/cases").json()}
    intact, cut, mid = cases["men-09.mpg"], cases["cut.mpg"], cases["mid.mpg"]
    assert intact["status"] == "done" and intact["warnings"] == []
    assert intact["frames_expected"] == intact["frames_done"] == 162
    for case in (cut, mid):
        assert case["status"] == "done" and case["verdict"]["state"] == "final"  # a verdict, with warnings
        assert case["warnings"][0].startswith(f"video is damaged: {case['frames_done']} frames decoded")
        assert any("decode error" in text for text in case["warnings"])
        assert case["frames_expected"] > case["frames_done"]  # announced, not overwritten by the decoded
        assert listed[case["name"]]["warnings"] == case["warnings"]
    assert "the file ends early (cut short?)" in cut["warnings"]
    assert any(text.startswith("gap of") and "frames) before frame" in text for text in mid["warnings"])
    assert 0.3 * 162 < cut["frames_done"] < 0.5 * 162 and mid["frames_done"] < 162
