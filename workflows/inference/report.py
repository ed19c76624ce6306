"""``report.html``: one static page per output folder, the scans a reader should look at first on top.

One row per scan, flagged scans first (most flags first), each with its axial montage and coronal view, its volumes,
its lesion table and its flags. The page opens from disk: no server, no script, nothing from the internet; pictures
are the output folder's own files, linked by name. De-identified runs show the neutral names only.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from workflows.machine.atomic import write_text_atomic

__all__ = ["REPORT_NAME", "write_report"]

REPORT_NAME = "report.html"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; font-size: 13px; }
tr.flagged > td:first-child { border-left: 6px solid #c62828; }
tr.clean > td:first-child { border-left: 6px solid #2e7d32; }
td.flags { color: #c62828; max-width: 22em; }
img { display: block; max-height: 240px; max-width: 720px; margin-bottom: 4px; }
table.lesions td, table.lesions th { font-size: 12px; padding: 2px 6px; }
"""


def _cell(value) -> str:
    return "" if value is None else html.escape(str(value))


def _amount(row: dict, what: str) -> str:
    """``12.5 mL`` (a volume), ``340 px`` (a 2D image), or the text a model that does not segment it left there."""
    value, unit = (row[f"{what}_ml"], " mL") if f"{what}_ml" in row else (row.get(f"{what}_pixels"), " px")
    return _cell(value) + ("" if isinstance(value, str) else unit)


def _pictures(output_dir: Path, row: dict) -> str:
    segmentation = Path(row.get("segmentation") or "")
    stem = segmentation.name.removesuffix("_seg.nii.gz").removesuffix("_mask.png")
    names = [f"{stem}_overlay.png", f"{stem}_coronal.png", f"{stem}_prediction.png"]
    shown = [name for name in names if stem and (output_dir / name).is_file()]
    # a file name is a URL path here: "x#y" and "100%25" must be encoded to load, then escaped for HTML
    return "".join(f'<img src="{html.escape(quote(name))}" alt="{html.escape(name)}">' for name in shown)


def _lesions(row: dict) -> str:
    lesions = row.get("lesion_table") or []
    if isinstance(row.get("lesions"), str):  # a model that does not segment tumours says so, never "none"
        return _cell(row["lesions"])
    if not lesions:
        return "none"
    body = "".join(f"<tr><td>{l['lesion']}</td><td>{l['volume_ml']}</td><td>{l['longest_axial_mm']}</td>"
                   f"<td>{_cell(l.get('slices'))}</td></tr>" for l in lesions[:20])
    more = f"<p>and {len(lesions) - 20} more (summary.json)</p>" if len(lesions) > 20 else ""
    return ('<table class="lesions"><tr><th>#</th><th>mL</th><th>longest axial mm</th><th>slices</th></tr>'
            f"{body}</table>{more}")


def write_report(output_dir: str | os.PathLike, rows: list[dict], deidentify: bool = False) -> Path:
    """Write ``report.html`` in ``output_dir`` from the summary ``rows`` (as :class:`ScanInference` writes them)."""
    output_dir = Path(output_dir)
    segmented = [r for r in rows if r.get("segmentation")]
    failed = [r for r in rows if r.get("error")]
    skipped = [r for r in rows if r.get("skipped")]

    def flags_of(row):
        return [f for f in str(row.get("flags") or "").split("; ") if f]

    ordered = sorted(segmented, key=lambda r: -len(flags_of(r)))  # stable: input order among equals
    lines = [f"<tr class=\"{'flagged' if flags_of(r) else 'clean'}\">"
             f"<td>{_cell(Path(str(r['scan'])).name if not deidentify else r['scan'])}</td>"
             f"<td class=\"flags\">{'<br>'.join(map(html.escape, flags_of(r))) or 'none'}</td>"
             f"<td>{_pictures(output_dir, r)}</td>"
             f"<td>liver {_amount(r, 'liver')}<br>tumour {_amount(r, 'tumour')}<br>slices {_cell(r.get('slice_mm'))} mm"
             f"<br>confidence {_cell(r.get('liver_confidence'))}</td>"
             f"<td>{_lesions(r)}</td></tr>" for r in ordered]
    problems = [f"<li>{_cell(r['scan'])}: {'FAILED: ' + _cell(r['error']) if r.get('error') else 'left out: ' + _cell(r['skipped'])}</li>"
                for r in failed + skipped]
    flagged = sum(1 for r in segmented if flags_of(r))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Liver segmentation report</title>
<style>{_STYLE}</style></head><body>
<h1>Liver segmentation report</h1>
<p>{len(segmented)} scan(s) segmented, {flagged} flagged (listed first), {len(failed)} failed, {len(skipped)} left out.
Green: liver, red: tumour. Volumes in mL; lesion diameters are the longest axial diameter (RECIST 1.1 style).</p>
<table><tr><th>scan</th><th>flags</th><th>pictures</th><th>volumes</th><th>lesions</th></tr>
{''.join(lines)}
</table>
{'<h2>Not segmented</h2><ul>' + ''.join(problems) + '</ul>' if problems else ''}
</body></html>
"""
    return write_text_atomic(output_dir / REPORT_NAME, page)
