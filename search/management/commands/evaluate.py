"""manage.py evaluate --model M [--split test] [--gallery split|all] [--fuse M1,M2] [--ann]
[--lang L]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from encoders import EncoderError
from gallery.flickr30k import LANG_PATTERN, SPLITS
from search.evaluation import (
    FUSIONS,
    GALLERIES,
    KS,
    PUBLISHED_TEXT_TO_IMAGE,
    EvaluationError,
    EvaluationReport,
    RankSummary,
    evaluate,
    evaluation_runs_record,
)
from workers.cli import model_argument_add, model_option


class Command(BaseCommand):
    help = (
        "Flickr30k retrieval: text->image and image->text Recall@1/5/10, median and mean rank, "
        "over the Karpathy split's images (--gallery split; the CLIP/ALIGN papers' 1K test) or "
        "every imported Flickr30k image (--gallery all). Text->image is ranked by pgvector as "
        "search ranks, exactly by default or through the HNSW index with --ann. --fuse adds "
        "models and reports their fusion beside each one. Each run is saved for the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        model_argument_add(parser)
        parser.add_argument("--split", choices=SPLITS, default="test", help="the queries' split")
        parser.add_argument("--gallery", choices=GALLERIES, default="split")
        parser.add_argument(
            "--fuse",
            default="",
            help="comma-separated models to fuse with --model (each is also reported alone)",
        )
        parser.add_argument(
            "--fusion",
            choices=[*FUSIONS, "both"],
            default="zsum",
            help="zsum: per-query z-normalised sum of similarities (default); rrf: "
            "reciprocal-rank fusion",
        )
        parser.add_argument("--ann", action="store_true", help="rank through the HNSW index")
        parser.add_argument(
            "--ann-k", type=int, default=max(KS), help="results fetched per query with --ann"
        )
        parser.add_argument(
            "--prompt", default="", help="prefix for every caption, e.g. 'a photo of '"
        )
        parser.add_argument(
            "--lang",
            default="en",
            help="only captions in this language are queries and candidates (default en; "
            "others come from manage.py import_captions)",
        )
        parser.add_argument("--no-save", action="store_true", help="do not record the run")

    def handle(self, *args: object, **options: Any) -> None:
        fused = [m.strip() for m in str(options["fuse"]).split(",") if m.strip()]
        model_ids = list(dict.fromkeys([model_option(options), *fused]))
        if fused and len(model_ids) < 2:
            raise CommandError("--fuse needs a model other than --model")
        fusion = str(options["fusion"])
        fusions = (FUSIONS if fusion == "both" else (fusion,)) if fused else ()
        if options["ann_k"] < max(KS):
            raise CommandError(f"--ann-k must be at least {max(KS)}")
        lang = str(options["lang"])
        if not LANG_PATTERN.match(lang):
            raise CommandError(f"--lang must be a language tag such as en, vi or de, not {lang!r}")
        try:
            report = evaluate(
                model_ids=model_ids,
                split=str(options["split"]),
                gallery=str(options["gallery"]),
                ann=bool(options["ann"]),
                ann_k=int(options["ann_k"]),
                fusions=fusions,
                prompt=str(options["prompt"]),
                lang=lang,
            )
        except (EvaluationError, EncoderError) as exc:
            raise CommandError(str(exc)) from exc
        self._print(report)
        if not options["no_save"]:
            runs = evaluation_runs_record(report=report)
            self.stdout.write(f"saved {len(runs)} runs (admin: Search > Evaluation runs)")

    def _print(self, report: EvaluationReport) -> None:
        gallery = (
            f"the {report.split} images" if report.gallery == "split" else "all Flickr30k images"
        )
        self.stdout.write(
            f"Flickr30k {report.split}: {report.n_image_queries} images, {report.n_queries} "
            f"caption queries ({report.lang}); gallery: {gallery} ({report.n_images} images, "
            f"{report.n_caption_candidates} captions)"
        )
        width = max([len(r.label) for r in report.results] + [44])
        self.stdout.write(
            f"{'':{width}}  {'text->image':^34}   {'image->text':^34}"
            f"\n{'system':{width}}  {_HEADER}   {_HEADER}   {'mode':5}  seconds"
        )
        for result in report.results:
            self.stdout.write(
                f"{result.label:{width}}  {_row(result.text_to_image, report.ann_k)}   "
                f"{_row(result.image_to_text, None)}   {result.mode:5}  "
                f"{result.duration_seconds:7.1f}"
            )
        self.stdout.write(
            "published zero-shot text->image R@1/5/10, Flickr30k 1K test; 'same weights' names "
            "the model above a row is like for like with:"
        )
        ours = {model_id for result in report.results for model_id in result.model_ids}
        for ref in PUBLISHED_TEXT_TO_IMAGE:
            same = f"same weights: {ref.model_id}" if ref.model_id in ours else ""
            self.stdout.write(
                f"{ref.system:{width}}  {ref.figures():>17}  {ref.source}"
                + (f"; {same}" if same else "")
            )
        differences = report.differences_from_papers()
        if differences:
            self.stdout.write(
                "Not comparable to the papers' 1K test: " + "; ".join(differences) + "."
            )
        else:
            self.stdout.write(
                "Comparable to the papers: the 1,000 test images and their 5,000 captions."
            )
        self.stdout.write("notes:")
        for note in report.notes:
            self.stdout.write(f"  - {note}")


_HEADER = f"{'R@1':>6} {'R@5':>6} {'R@10':>6} {'MedR':>6} {'MeanR':>7}"


def _row(summary: RankSummary, ann_k: int | None) -> str:
    unknown = f">{ann_k}" if ann_k else "-"
    median = f"{summary.median_rank:.1f}" if summary.median_rank is not None else unknown
    mean = f"{summary.mean_rank:.2f}" if summary.mean_rank is not None else "-"
    return f"{summary.r1:6.2f} {summary.r5:6.2f} {summary.r10:6.2f} {median:>6} {mean:>7}"
