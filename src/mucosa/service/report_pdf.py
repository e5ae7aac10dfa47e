"""The case report as PDF (ReportLab), from the same data and pictures as the HTML page
(:class:`~mucosa.service.report.ReportParts`).

A4 pages, each with the banner at its top and the case id and page number at its foot. Text is set in
DejaVu Sans, the font matplotlib ships, so that any file name or exam field prints (the PDF's standard
fonts cover Western European letters only).
"""

from __future__ import annotations

import functools
import html
import io
from pathlib import Path

from mucosa.service.report import (
    MONOSPACED,
    ReportParts,
    atlas_rows,
    case_rows,
    key_caption,
    key_frames_note,
    model_rows,
    quality_line,
    review_rows,
    share_colours,
    verdict_lines,
)

__all__ = ["report_pdf"]

NAVY, MUTED, LINE, AMBER = "#1d3f72", "#4f5b6a", "#dde3ea", "#b7791f"


@functools.cache
def _fonts() -> tuple[str, str, str]:
    """Register DejaVu Sans (regular, bold, mono) from matplotlib's data once; their ReportLab names."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = (("mucosa-sans", "DejaVuSans.ttf"), ("mucosa-bold", "DejaVuSans-Bold.ttf"),
             ("mucosa-mono", "DejaVuSansMono.ttf"))
    for name, file in names:
        pdfmetrics.registerFont(TTFont(name, str(folder / file)))
    return names[0][0], names[1][0], names[2][0]


def _styles():
    from reportlab.lib.styles import ParagraphStyle

    sans, bold, mono = _fonts()
    base = ParagraphStyle("body", fontName=sans, fontSize=9.5, leading=13)
    return {"body": base,
            "title": ParagraphStyle("title", base, fontName=bold, fontSize=16, leading=20),
            "sub": ParagraphStyle("sub", base, textColor=MUTED),
            "h2": ParagraphStyle("h2", base, fontName=bold, fontSize=11.5, leading=15, spaceBefore=10, spaceAfter=4),
            "label": ParagraphStyle("label", base, fontName=bold, fontSize=17, leading=21),
            "key": ParagraphStyle("key", base, textColor=MUTED),
            "mono": ParagraphStyle("mono", base, fontName=mono, fontSize=8, leading=10),
            "small": ParagraphStyle("small", base, fontSize=8, leading=10.5, textColor=MUTED)}


def report_pdf(parts: ReportParts) -> bytes:
    """The report as PDF bytes."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    data, styles = parts.data, _styles()
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=16 * mm, rightMargin=16 * mm, topMargin=24 * mm,
                            bottomMargin=16 * mm, title=f"mucosa case report: {data['case']['name']}",
                            author="mucosa", subject=data["banner"])
    page = functools.partial(_page, data=data)
    doc.build(_story(parts, styles, doc.width), onFirstPage=page, onLaterPages=page)
    return buffer.getvalue()


def _page(canvas, doc, data: dict) -> None:
    """The banner on top of every page; case id, generation time and page number at its foot."""
    from reportlab.lib.units import mm

    sans, bold, _ = _fonts()
    width, height = doc.pagesize
    canvas.saveState()
    canvas.setFillColor(NAVY)
    canvas.rect(0, height - 14 * mm, width, 14 * mm, stroke=0, fill=1)
    canvas.setFillColor("#ffffff")
    canvas.setFont(bold, 12)
    canvas.drawCentredString(width / 2, height - 9 * mm, data["banner"])
    canvas.setFillColor(MUTED)
    canvas.setFont(sans, 7.5)
    canvas.drawString(doc.leftMargin, 8 * mm, f"case {data['case']['id']} · generated {data['generated']}")
    canvas.drawRightString(width - doc.rightMargin, 8 * mm, f"page {doc.page}")
    canvas.restoreState()


def _p(text: str, style) -> object:
    from reportlab.platypus import Paragraph

    return Paragraph(html.escape(str(text)), style)


def _table(rows: list[tuple[str, str]], styles, width: float):
    from reportlab.platypus import Table, TableStyle

    cells = [[_p(k, styles["key"]), _p(v, styles["mono" if k in MONOSPACED else "body"])] for k, v in rows]
    table = Table(cells, colWidths=[0.28 * width, 0.72 * width], hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.4, LINE),
                               ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3)]))
    return table


def _story(parts: ReportParts, styles, width: float) -> list:
    from reportlab.platypus import KeepTogether, Spacer

    data = parts.data
    case = data["case"]
    story = [_p("mucosa case report", styles["title"]),
             _p(f"{case['name']} · case {case['id']} · generated {data['generated']}", styles["sub"]),
             Spacer(1, 8), _verdict_box(data, styles, width),
             _p("Case and exam", styles["h2"]), _table(case_rows(data), styles, width),
             _p("Model", styles["h2"]), _table(model_rows(data), styles, width),
             _p("Atlas of confirmed cases", styles["h2"]), _table(atlas_rows(data), styles, width)]
    story += _quality(data, styles, width)
    story += _pictures(parts, styles, width)
    rows = review_rows(data["review"])
    story += [KeepTogether([_p("Reviewer sign-off", styles["h2"]),  # never split over two pages
                            _table(rows, styles, width) if rows else _p("Not reviewed yet: no sign-off.",
                                                                        styles["body"])]),
              Spacer(1, 10),
              _p(f"{data['banner']}. The verdict supports, and does not replace, the endoscopist's judgement.",
                 styles["small"])]
    return story


def _verdict_box(data: dict, styles, width: float):
    from reportlab.graphics.shapes import Drawing, Rect
    from reportlab.platypus import Table, TableStyle

    words, v, colours = verdict_lines(data), data["verdict"], data["model"]["colours"]
    bar, x, fills = Drawing(width - 30, 10), 0.0, share_colours(data)
    for row in v["shares"]:
        if row["share"]:
            bar.add(Rect(x, 0, row["share"] * (width - 30), 10, fillColor=fills[row["class"]], strokeWidth=0))
            x += row["share"] * (width - 30)
    bar.add(Rect(0, 0, width - 30, 10, fillColor=None, strokeColor="#1b2430", strokeWidth=0.6))
    cells = [[_p(words["label"], styles["label"])], *([[_p(words[k], styles["body"])] for k in ("confidence",)
                                                        if words[k]]),
             [bar], *([[_p(words[k], styles["body"])] for k in ("shares", "interval", "frames") if words[k]])]
    box = Table(cells, colWidths=[width - 6])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.6, LINE),
                             ("LINEBEFORE", (0, 0), (0, -1), 6, colours.get(v["class"], "#8a94a3")),
                             ("LEFTPADDING", (0, 0), (-1, -1), 12), ("TOPPADDING", (0, 0), (-1, -1), 2)]))
    return box


def _quality(data: dict, styles, width: float) -> list:
    from reportlab.platypus import Table, TableStyle

    story = [_p("Quality and decoding", styles["h2"]), _p(quality_line(data), styles["body"])]
    if not data["warnings"]:
        return [*story, _p("No decode warnings: the recording decoded whole.", styles["body"])]
    cells = [[_p("Damaged recording: the verdict rests on the frames that decoded.", styles["body"])],
             *([_p("• " + text, styles["body"])] for text in data["warnings"])]
    box = Table(cells, colWidths=[width])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.8, AMBER), ("BACKGROUND", (0, 0), (-1, -1), "#fff6e0")]))
    return [*story, box]


def _image(data: bytes, width: float):
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image

    w, h = ImageReader(io.BytesIO(data)).getSize()
    return Image(io.BytesIO(data), width=width, height=width * h / w)


def _pictures(parts: ReportParts, styles, width: float) -> list:
    from reportlab.platypus import KeepTogether, Table, TableStyle

    story = [KeepTogether([_p("Timeline", styles["h2"]), _image(parts.timeline_png, width)]),
             _p("Key frames", styles["h2"]),
             _p(key_frames_note(parts.data), styles["small"])]
    rows, unfamiliar = [], bool(parts.data["verdict"].get("reason"))
    for key in parts.data["key_frames"]:
        caption = _p(key_caption(key, unfamiliar), styles["body"])
        images = parts.images.get(key["frame"])
        pictures = [_image(images[0], 0.36 * width), _image(images[1], 0.36 * width)] if images else ["", ""]
        rows.append([*pictures, caption])
    if not rows:
        return [*story, _p("No informative frame.", styles["body"])]
    table = Table(rows, colWidths=[0.37 * width, 0.37 * width, 0.26 * width])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
    return [*story, table]
