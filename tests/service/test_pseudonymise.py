"""``mucosa serve --pseudonymise``: a patient and file names planted in a case, a name typed in its free text
(region, review note), and the atlas's own patients and files, are in no byte of what the server hands out
(every report format and its file name, timeline.csv, the similar cases, an upload's refusal); without the
setting they are, so the check can fail."""

import re
import shutil

import pytest

from mucosa.data.pseudonyms import pseudonymiser
from mucosa.service.privacy import WITHHELD
from serving import patient_images, pdf_text, serving, upload, wait_done

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PATIENT, FILE, KEY = "Roe_Richard_1980", "Doe_John_1970", "the unit's key"
TYPED = "John Smith"  # a name typed in free text: no known identifier, so only withholding the text hides it


def _handed_out(client, case_id: str, tmp_path) -> dict[str, bytes]:
    """Every download of the case, its headers included; the PDF as its bytes and as pdftotext reads it."""
    outputs = {}
    for what in ("report.json", "report.html?download=1", "report.pdf", "timeline.csv", "similar?k=5"):
        answer = client.get(f"/v1/cases/{case_id}/{what}")
        assert answer.status_code == 200, (what, answer.text)
        outputs[what] = answer.content + str(answer.headers).encode()
    outputs["report.pdf text"] = "".join(pdf_text(outputs["report.pdf"], tmp_path).split()).encode()
    return outputs


@pytest.mark.parametrize("pseudonymise", [False, True])
def test_nothing_handed_out_names_the_patient_or_a_file(atlas_engine, atlas_run, tmp_path, pseudonymise):
    images = []
    for n, path in enumerate(patient_images(atlas_run.cohort, "P01")[:6]):
        images.append(tmp_path / f"{FILE}_{n}.png")
        shutil.copyfile(path, images[-1])
    atlas = atlas_engine.atlas.records
    atlas_names = {str(p) for p in atlas.patients} - {"P01"} | {str(f) for f in atlas.files}
    with serving(atlas_engine, pseudonymise=pseudonymise, pseudonym_key=KEY) as (client, _):
        fields = {"patient": PATIENT, "region": f"sigmoid of {TYPED}, seen with {PATIENT}"}
        created = upload(client, f"/v1/cases?name={FILE} colonoscopy", *images, data=fields)
        case = wait_done(client, created.json()["id"])
        assert case["status"] == "done" and case["patient"] == PATIENT  # the viewer shows what was typed
        review = {"histology": "active", "agrees": case["verdict"]["class"] in (None, "active"),
                  "note": f"{PATIENT}: biopsy of {FILE}_0.png, Mr {TYPED}"}
        assert client.post(f"/v1/cases/{case['id']}/review", json=review).status_code == 201
        outputs = _handed_out(client, case["id"], tmp_path)
        (tmp_path / f"{FILE}.mpg").write_bytes(b"not a video at all")
        refused = upload(client, "/v1/cases", tmp_path / f"{FILE}.mpg")
        assert refused.status_code in (415, 422)
        outputs["refusal"] = refused.content
        similar = client.get(f"/v1/cases/{case['id']}/similar").json()["similar"]
        report = client.get(f"/v1/cases/{case['id']}/report.json").json()
    found = {what: [name for name in (PATIENT, FILE, TYPED) if name.encode() in data] for what, data in outputs.items()}
    pictures = re.compile(rb"data:image/\w+;base64,[A-Za-z0-9+/=]+")  # where "P10" may occur by chance
    from_atlas = {what: sorted(n for n in atlas_names if n.encode() in pictures.sub(b"", data))
                  for what, data in outputs.items() if what.startswith(("similar", "report.json"))}
    if not pseudonymise:  # the check sees what it looks for
        raw = ("report.pdf", "similar?k=5")  # the PDF's text is compressed; similar cases are the atlas's
        assert all(found[what] for what in outputs if what not in raw), found
        assert all(from_atlas.values()), from_atlas
        return
    assert not any(found.values()) and not any(from_atlas.values()), (found, from_atlas)
    name = pseudonymiser(KEY)
    assert report["exam"]["patient"] == name(PATIENT) and report["case"]["name"] == name(f"{FILE} colonoscopy")
    assert report["exam"]["region"] == WITHHELD and report["review"]["note"] == WITHHELD
    assert similar and {c["patient"] for c in similar} <= {name(str(p)) for p in atlas.patients}
    assert [c["patient"] for c in report["atlas"]["similar"]] == [c["patient"] for c in similar]
