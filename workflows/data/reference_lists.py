"""The reference project's own chunk lists, imported: its ``chunk_<k>.txt`` files (one Kaggle JPG path per line,
Windows paths as it wrote them) become the bundle's ``chunk_<k>.json``, its validation list ``val.json``, and the
patient leak its split had is measured and reported rather than hidden.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from workflows.machine.atomic import write_json_atomic
from workflows.data.slice_set import parse_slice_name, read_mask

__all__ = ["import_reference_lists"]

_CHUNK = re.compile(r"^chunk_(\d+)\.txt$", re.IGNORECASE)


def _names(path: Path) -> list[str]:
    """The image file names a list holds: the last part of each line's first path (Windows or POSIX)."""
    names = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        first = re.split(r"[,\t;]", line.strip())[0].strip().strip('"')
        if first:
            names.append(re.split(r"[\\/]", first)[-1])
    return names


def _index_root(images_root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    images, masks = {}, {}
    for path in images_root.rglob("*"):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.is_file():
            is_mask = any("mask" in part.lower() for part in path.relative_to(images_root).parts[:-1])
            (masks if is_mask else images).setdefault(path.name, path)
    return images, masks


def import_reference_lists(reference_dir: str | os.PathLike, images_root: str | os.PathLike,
                           lists_dir: str | os.PathLike) -> dict:
    """Write the bundle's lists from the reference's; returns the report (also in ``split.json``).

    Raises:
        FileNotFoundError / ValueError: no ``chunk_<k>.txt``, or listed images that are not under ``images_root``
            (the first few named).
    """
    reference_dir, images_root, lists_dir = Path(reference_dir), Path(images_root), Path(lists_dir)
    chunk_files = sorted((p for p in reference_dir.iterdir() if _CHUNK.match(p.name)),
                         key=lambda p: int(_CHUNK.match(p.name).group(1)))
    if not chunk_files:
        raise FileNotFoundError(f"--from-reference {reference_dir}: no chunk_<k>.txt in it.")
    val_files = sorted(p for p in reference_dir.iterdir() if p.suffix.lower() == ".txt" and "val" in p.name.lower())
    images, masks = _index_root(images_root)
    lists_dir.mkdir(parents=True, exist_ok=True)

    def entries(names: list[str], source: Path) -> list[dict]:
        missing = [n for n in names if n not in images or n not in masks]
        if missing:
            raise ValueError(f"{source}: {len(missing)} listed image(s) or their masks are not under {images_root} "
                             f"(first: {', '.join(missing[:3])}); point --images-root at the Kaggle folder holding "
                             "train_images/ and train_masks/.")
        out = []
        for name in names:
            parsed = parse_slice_name(name)
            if parsed is None:
                raise ValueError(f"{source}: {name} is not named volume-<id>_slice_<k> as the Kaggle export is.")
            out.append({"image": os.path.relpath(images[name], lists_dir), "label": os.path.relpath(masks[name], lists_dir),
                        "volume_id": parsed[0], "slice_index": parsed[1], "positive": bool(read_mask(masks[name]).any())})
        return out

    chunks = [entries(_names(p), p) for p in chunk_files]
    val = [e for p in val_files for e in entries(_names(p), p)]
    for k, chunk in enumerate(chunks):
        write_json_atomic(lists_dir / f"chunk_{k}.json", {"training": chunk})
    write_json_atomic(lists_dir / "val.json", {"validation": val})
    write_json_atomic(lists_dir / "val_balanced.json", {"validation": val})

    trained: dict[str, set[int]] = defaultdict(set)
    for entry in (e for chunk in chunks for e in chunk):
        trained[entry["volume_id"]].add(entry["slice_index"])
    validated = {e["volume_id"] for e in val}
    shared = sorted(validated & set(trained), key=lambda v: (len(v), v))
    neighbours = sum(1 for e in val if {e["slice_index"] - 1, e["slice_index"] + 1} & trained.get(e["volume_id"], set()))
    report = {
        "chunks": [len(c) for c in chunks], "validation_slices": len(val),
        "leak": {"volumes_in_training_and_validation": len(shared), "of_validation_volumes": len(validated),
                 "validation_slices_with_a_neighbour_in_training": neighbours, "volumes": shared},
    }
    write_json_atomic(lists_dir / "split.json", {
        "slices_dirs": [os.path.relpath(images_root.resolve(), lists_dir.resolve())], "target": "liver", "seed": None,
        "volumes": {"train": sorted(trained, key=lambda v: (len(v), v)),
                    "val": sorted(validated, key=lambda v: (len(v), v)), "test": []},
        "counts": report, "chunks": [f"chunk_{k}.json" for k in range(len(chunks))],
        "imported_from": str(reference_dir.resolve()),
    })
    return report
