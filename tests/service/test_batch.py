"""Several files in one upload (``POST /v1/cases``): several videos open a case each, all or none; one video,
or several images, stay one case; a mix is refused with words that name its kinds."""

import pytest

from media import files_under
from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_several_videos_open_a_case_each(engine, brain_video, damaged):
    with serving(engine) as (client, root):
        response = upload(client, "/v1/cases?name=left%20colon", brain_video, damaged / "cut.mpg")
        assert response.status_code == 202, response.text
        created = response.json()["cases"]
        assert len(created) == len({c["id"] for c in created}) == 2
        assert all(c["url"] == f"/v1/cases/{c['id']}" and c["events"] == c["url"] + "/events" for c in created)
        cases = [wait_done(client, c["id"]) for c in created]
        assert [c["files"] for c in cases] == [["men-09.mpg"], ["cut.mpg"]]
        assert [c["name"] for c in cases] == ["left colon · men-09.mpg", "left colon · cut.mpg"]
        assert [c["kind"] for c in cases] == ["video", "video"] and all(c["status"] == "done" for c in cases)
        assert cases[0]["frames_done"] == 162 and cases[0]["warnings"] == [] and cases[1]["warnings"]
        store = client.app.state.store
        for case, size in zip(cases, (brain_video.stat().st_size, (damaged / "cut.mpg").stat().st_size)):
            (video,) = store.case(case["id"]).media  # each its own video, kept in the store
            assert video.suffix == ".mpg" and store.media_path(video).stat().st_size == size
        assert files_under(root) == []  # the uploads' temporary files are gone
        one = upload(client, "/v1/cases", brain_video).json()  # one video: one case, as before
        assert set(one) == {"id", "status", "url", "events"}


def test_one_bad_video_refuses_them_all_and_leaves_nothing(engine, brain_video, tmp_path):
    (tmp_path / "clip.mpg").write_bytes(b"\x00\x00\x01\xba" + b"\x00" * 4000)
    with serving(engine) as (client, root):
        response = upload(client, "/v1/cases", brain_video, tmp_path / "clip.mpg", brain_video)
        detail = response.json()["detail"]
        assert response.status_code == 422 and detail.startswith("clip.mpg: cannot open video")
        assert str(root) not in detail and "/" not in detail and "rrno" not in detail  # no server path, no errno
        assert client.get("/v1/cases").json() == [] and files_under(root) == []


def test_a_queue_without_room_for_every_video_refuses_them_all(engine, brain_video):
    with serving(engine, queue_size=1) as (client, root):
        response = upload(client, "/v1/cases", brain_video, brain_video)
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert client.get("/v1/cases").json() == [] and files_under(root) == []


def test_a_mix_of_videos_and_images_is_refused_naming_its_kinds(client_engine_files):
    client, brain_video, frame_png = client_engine_files
    for files, words in (((brain_video, frame_png, frame_png), "1 video and 2 images given together"),
                         ((brain_video, brain_video, frame_png), "2 videos and 1 image given together")):
        response = upload(client, "/v1/cases", *files)
        assert response.status_code == 422 and response.json()["detail"].startswith(words)
    images = upload(client, "/v1/cases", frame_png, frame_png).json()  # several images: one case, as before
    assert wait_done(client, images["id"])["kind"] == "images"


@pytest.fixture
def client_engine_files(engine, brain_video, frame_png):
    with serving(engine) as (client, _):
        yield client, brain_video, frame_png
