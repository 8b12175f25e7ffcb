"""``clip-debias index`` and ``clip-debias search``: text-to-image search with an artifact's text tower, torch-free
(``runtime.search``), and the retrieval skew of a query list (``runtime.retrieval_skew``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.choices import DatasetFormat, SearchEngine, Split
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.image_folder import IMAGE_SUFFIXES, folder_images
from clip_debias.runtime.limits import DEFAULT_MAX_ROWS
from clip_debias.runtime.ownership import json_object_with, register_file_kind
from clip_debias.runtime.tables import output_console, print_text_table, table
from clip_debias.toolchain.cli.options import (AllowOutsideRootOpt, BatchOpt, ForceOpt, JsonOpt, OptionalDatasetOpt,
                                               OptionalSplitOpt, ProtectedOpt, QueriesOpt, SkewKOpt, TargetOpt,
                                               check_json_target, choice_option)

SEARCH_REPORT = "clip-debias search"  # the 'report' field of search --json (how runtime.ownership recognises it)
register_file_kind("search-report", "a report written by 'clip-debias search --json'",
                   json_object_with({"report"}, ("report", SEARCH_REPORT)))


def dataset_rows(dataset: DatasetFormat, data: Path, split: Split, target: str | None,
                 outside: bool, max_rows: int = DEFAULT_MAX_ROWS) -> tuple[list[Path], list[str], dict[str, list[str]]]:
    """(image paths, ids = paths relative to DATA, attributes {label, group, each attribute: value names}) of a
    split."""
    from clip_debias.runtime.datasets import load_index
    from clip_debias.runtime.limits import IndexChecks

    index = load_index(str(dataset), data, str(split), allow_outside_root=outside, target=target,
                       checks=IndexChecks(max_rows=max_rows))
    paths = [r.path for r in index.records]
    root = index.root if index.root.is_dir() else index.root.parent
    ids = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]
    attrs = {"label": [index.class_names[r.label] for r in index.records],
             "group": [index.group_names[r.group] for r in index.records]}
    for a in index.all_attributes():
        attrs[a.name] = [a.values[v] for v in index.attribute_ids(a.name)]
    return paths, ids, attrs


def index_cmd(
    images: Annotated[Path, typer.Argument(metavar="IMAGES", help="A folder of images (searched recursively), or "
                                                                  "with --dataset the DATA of a dataset.")],
    artifact: Annotated[Path, typer.Option("--artifact", metavar="DIR", help="Artifact directory (its image "
                                                                             "embeddings; its digest is recorded).")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Index directory to write (new, or an index "
                                                                   "of ours: replaced atomically).")],
    dataset: OptionalDatasetOpt = None,
    split: OptionalSplitOpt = None,
    target: TargetOpt = None,
    faiss: Annotated[bool, typer.Option("--faiss", help="Also write a FAISS flat index (needs faiss-cpu: the "
                                                        "[search] extra).")] = False,
    batch_size: BatchOpt = 32,
    allow_outside_root: AllowOutsideRootOpt = False,
    max_rows: Annotated[int, typer.Option(
        "--max-rows", metavar="N", min=1, help="Refuse a folder of more image files (or a metadata file of more "
                                               "rows) than this, while it is read.")] = DEFAULT_MAX_ROWS,
) -> None:
    """Embed IMAGES with ARTIFACT's (debiased) image tower into a search index: ids, per-row attributes (a dataset's
    label, group and attributes) and the artifact digest."""
    from clip_debias.runtime.classifier import load
    from clip_debias.runtime.progress import Progress
    from clip_debias.runtime.search import build_index, import_faiss

    if faiss:
        import_faiss()
    if dataset is not None:
        if split is None:
            raise ClipDebiasError("--dataset needs --split (which split to index)")
        paths, ids, attrs = dataset_rows(dataset, images, split, target, allow_outside_root, max_rows)
        source = f"{dataset} {images} split {split}"
    else:
        if split is not None:
            raise ClipDebiasError("--split applies to a --dataset; IMAGES is a folder")
        if not images.is_dir():
            raise ClipDebiasError(f"{images}: not a folder (a dataset? add --dataset FORMAT --split SPLIT)")
        paths = folder_images(images, max_rows)
        ids, attrs, source = [str(p.relative_to(images)) for p in paths], {}, f"folder {images}"
        if not paths:
            raise ClipDebiasError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    clf = load(artifact, device="cpu")
    with Progress(f"index {source}", len(paths), -(-len(paths) // batch_size)) as bar:
        build_index(clf, paths, ids, out, attrs, source=source, with_faiss=faiss, batch_size=batch_size,
                    progress=bar.advance)
    typer.echo(f"wrote {out} ({len(paths)} images, artifact digest {clf.digest})")


def _artifact_of(index: object, artifact: Path | None) -> Path:
    """The artifact to embed queries with: ``--artifact``, else the one the index records."""
    if artifact is not None:
        return artifact
    recorded = getattr(index, "record").source_artifact
    if not recorded:
        raise ClipDebiasError("the index records no artifact path: pass --artifact DIR")
    return Path(recorded)


def search_cmd(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index directory written by 'clip-debias "
                                                                    "index'.")],
    queries: Annotated[Optional[list[str]], typer.Argument(metavar="QUERIES",
                                                           help="Text queries (one or more).")] = None,
    k: Annotated[int, typer.Option("-k", metavar="N", min=1, help="Results per query.")] = 20,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", metavar="DIR", help="Artifact for the query embeddings (default: the one the index was built "
                                          "with); its digest must be the index's.")] = None,
    engine: Annotated[SearchEngine, choice_option(
        SearchEngine, "--engine", "numpy: exact; faiss: FAISS flat (the [search] extra), same results.")
    ] = SearchEngine.NUMPY,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Embed each query through the artifact's "
                                                              "templates (prompt ensembling).")] = False,
    queries_file: QueriesOpt = None,
    protected: ProtectedOpt = None,
    skew_k: SkewKOpt = "10,50",
    max_retrieval_skew: Annotated[Optional[float], typer.Option(
        "--max-retrieval-skew", metavar="LN_RATIO", min=0.0,
        help="Gate with --queries: exit 1 when the mean over queries of MaxSkew@k exceeds it at any k of "
             "--skew-k (ln 2 = 0.693: a top k of one value of a 50/50 attribute).")] = None,
    json_path: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """The K best images of INDEX for each of QUERIES (cosine of the artifact's text and debiased image
    embeddings), or with --queries FILE --protected COLUMN the retrieval skew of the list (MaxSkew@k, MinSkew@k,
    NDKL@k, share of queries whose top k is one value), gated by --max-retrieval-skew (exit 1 when it fails)."""
    from clip_debias.runtime.atomic_output import write_atomic
    from clip_debias.runtime.classifier import load
    from clip_debias.runtime.search import load_index

    if bool(queries) == bool(queries_file):
        raise ClipDebiasError("give QUERIES or --queries FILE (retrieval skew), not both" if queries else
                              "nothing to search: give QUERIES or --queries FILE")
    if max_retrieval_skew is not None and queries_file is None:
        raise ClipDebiasError("--max-retrieval-skew gates the retrieval skew of --queries FILE")
    check_json_target(json_path, "search-report", force)
    index = load_index(index_dir)
    clf = load(_artifact_of(index, artifact), device="cpu", expected_digest=index.record.artifact_digest)
    console = output_console()
    if queries_file is None:
        hits = index.search(clf, queries or [], k, str(engine), ensemble)
        for q, rows in zip(queries or [], hits):
            t = table(["rank", "score", "id"], title=f"{q!r}: top {len(rows)} of {len(index)}", right={0, 1})
            for rank, h in enumerate(rows, 1):
                t.add_row(str(rank), f"{h.score:.4f}", h.id)
            console.print(t)
        report: dict = {"report": SEARCH_REPORT,
                        "queries": {q: [h.__dict__ for h in rows] for q, rows in zip(queries or [], hits)}}
    else:
        from clip_debias.runtime.metrics.retrieval_skew import retrieval_skew_tables
        from clip_debias.runtime.retrieval_skew import index_retrieval_skew, read_queries, worst_k

        if protected is None:
            raise ClipDebiasError(f"--queries needs --protected COLUMN (the index has: "
                                  f"{', '.join(index.record.attributes) or 'no attribute'})")
        texts, desired = read_queries(queries_file)
        try:
            ks = [int(x) for x in skew_k.split(",") if x.strip()]
        except ValueError:
            raise ClipDebiasError(f"--skew-k {skew_k!r}: expected comma-separated integers") from None
        index.check_artifact(clf)
        try:
            skew = index_retrieval_skew(index, clf.encode_text(texts, ensemble=ensemble), texts, protected, ks,
                                        desired)
        except ValueError as e:
            raise ClipDebiasError(f"--protected {protected}: {e}") from None
        for t in retrieval_skew_tables(skew):
            print_text_table(t, console)
        from dataclasses import asdict

        report = {"report": SEARCH_REPORT, "retrieval_skew": asdict(skew)}
        if max_retrieval_skew is not None:
            worst = worst_k(skew)
            passed = worst.mean_max_skew <= max_retrieval_skew
            report["gate"] = {"max_retrieval_skew": max_retrieval_skew, "k": worst.k, "value": worst.mean_max_skew,
                              "passed": passed}
            typer.echo(f"{'PASS' if passed else 'FAIL'}: mean MaxSkew@{worst.k} {worst.mean_max_skew:.3f} "
                       f"{'<=' if passed else '>'} {max_retrieval_skew:g} ({len(texts)} queries, {skew.n} images)")
    if json_path is not None:
        write_atomic(json_path, json.dumps(report, indent=2) + "\n", "search-report", force)
        typer.echo(f"wrote {json_path}")
    if report.get("gate", {}).get("passed") is False:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("index", short_help="Embed images into a search index (torch-free).")(index_cmd)
    app.command("search", short_help="Text-to-image search over an index; retrieval skew of a query list.")(
        search_cmd)
