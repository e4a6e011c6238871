"""``hierclr prepare-data`` (an ImageFolder tree or CIFAR archive -> parquet shards + manifest, on Ray) and
``hierclr inspect-data`` (list a dataset and decode a few rows)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from hierclr.commands.common import int_list


def register(sub) -> None:
    prep = sub.add_parser("prepare-data", help="convert an ImageFolder tree or CIFAR archive into parquet shards (Ray)")
    prep.add_argument("source", help="ImageFolder root (train/ val/ inside) or split dir, or a CIFAR .tar.gz / dir")
    prep.add_argument("out", help="output directory or s3:// / gs:// URI; one sub-directory per split")
    prep.add_argument("--kind", choices=("auto", "imagefolder", "cifar10", "cifar100"))
    prep.add_argument("--splits", type=lambda t: tuple(t.split(",")), help="ImageFolder splits, e.g. train,val")
    prep.add_argument("--shard-size", dest="shard_size", type=int, help="rows per shard (default 1000)")
    prep.add_argument("--reencode", choices=("none", "jpeg", "png"), help="default: keep the original bytes")
    prep.add_argument("--quality", type=int, help="JPEG quality when re-encoding (default 90)")
    prep.add_argument("--resize", type=int, help="resize for a low-resolution variant (e.g. 64)")
    prep.add_argument("--resize-mode", dest="resize_mode", choices=("shorter", "square"))
    prep.add_argument("--val-fraction", dest="val_fraction", type=float, help="carve a val split out of train")
    prep.add_argument("--subset-file", dest="subset_file", help="keep only the listed train files (1percent.txt)")
    prep.add_argument("--val-annotations", dest="val_annotations", help="file -> class list for a flat val folder")
    prep.add_argument("--hierarchy", help="label hierarchy: JSON or `child parent` edge list")
    prep.add_argument("--hierarchy-depths", dest="hierarchy_depths", type=int_list,
                      help="cut an edge-list tree at these depths from the root, e.g. 4,2")
    prep.add_argument("--hierarchy-order", dest="hierarchy_order", choices=("child_parent", "parent_child"))
    prep.add_argument("--download", action="store_true", default=None, help="download CIFAR into SOURCE (internet)")
    prep.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                      help="do not decode every image in the scan pass")
    prep.add_argument("--max-bad-fraction", dest="max_bad_fraction", type=float)
    prep.add_argument("--seed", type=int)
    prep.add_argument("--num-cpus", dest="num_cpus", type=int, help="parallel tasks (starts a local Ray with this many)")
    prep.set_defaults(func=run_prepare)


    ins = sub.add_parser("inspect-data", help="list a dataset and decode a few rows")
    ins.add_argument("uri")
    ins.add_argument("--format", choices=("auto", "parquet", "webdataset", "imagefolder"), default="auto")
    ins.add_argument("--hierarchy", default=None)
    ins.add_argument("--verify", action="store_true", help="check every parquet shard's sha256")
    ins.add_argument("--sample", type=int, default=3)
    ins.add_argument("--num-cpus", dest="num_cpus", type=int, default=None)
    ins.set_defaults(func=run_inspect)


def run_prepare(args: argparse.Namespace) -> int:
    from hierclr.data.prepare import PrepareConfig, prepare_data

    fields = {k: v for k, v in vars(args).items() if k in PrepareConfig.model_fields and v is not None}
    cfg = PrepareConfig(**fields)  # pydantic names the bad field
    t0 = time.perf_counter()
    manifests = prepare_data(cfg)
    summary = {name: {"rows": m.num_rows, "shards": len(m.shards), "classes": len(m.classes),
                      "hierarchy_levels": len(m.hierarchy["names"]) if m.hierarchy else 1, "skipped": len(m.skipped)}
               for name, m in manifests.items()}
    print(json.dumps({"out": cfg.out, "seconds": round(time.perf_counter() - t0, 1), "splits": summary}, indent=2))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from hierclr.data.decode import decode_rgb
    from hierclr.data.source import open_source
    from hierclr.runtime.ray_start import ensure_ray

    ensure_ray(args.num_cpus, log_to_driver=False)
    src = open_source(args.uri, format=args.format, hierarchy=args.hierarchy, verify=args.verify)  # raises on a bad one
    verified = None
    if args.verify and src.manifest is not None:
        n = len(src.manifest.shards)
        verified = f"{n}/{n} shards"
        print(f"inspect-data: {n}/{n} shards verified (sha256 as in the manifest)", file=sys.stderr)
    elif args.verify:
        print(f"inspect-data: --verify: {src.format} data has no manifest of hashes; nothing verified", file=sys.stderr)
    rows = src.read().take(args.sample)
    shapes = [list(decode_rgb(r["image"]).shape) for r in rows]
    print(json.dumps({"uri": src.uri, "format": src.format, "rows": src.num_rows, "classes": len(src.classes),
                      "hierarchy": list(src.hierarchy.sizes) if src.hierarchy else None, "units": len(src.units),
                      "verified": verified,
                      "sample": [{"id": int(r["id"]), "label": int(r["label"]), "labels": [int(x) for x in r["labels"]],
                                  "shape": s} for r, s in zip(rows, shapes)]}, indent=2))
    return 0
