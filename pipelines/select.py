"""`sluice select INPUT... --method el2n|sensitivity|perplexity [options] --output DIR`.

Builds a job from the chosen method and runs it like `sluice run` (outputs, manifest with every
setting, stats.json, dead-letter): see docs/selection.md.

- `el2n`: stage `el2n` (proxy classifier on `--label-field`, else a proxy byte LM), then stage
  `select` keeping the `--keep` policy by EL2N (default top: Paul et al. keep the hard examples).
- `perplexity`: the proxy LM's perplexity from the same stage, kept by `--keep` (default middle:
  Marion et al. 2023).
- `sensitivity`: stage `sensitivity`, `--size` weighted draws: by default over equal-count strata
  of a character n-gram embedding (no loss needed to draw); `--design clusters` is the paper's
  k-means sensitivity sampling plus the cluster representatives, with losses at the
  representatives from `--loss-field` or a proxy LM.
- `balance` (MetaCLIP), `prototypes` (Sorscher et al. 2022), `semdedup` (Abbas et al. 2023),
  `cluster_complexity` (Abbas et al. 2024): the stages of transforms/selection/pruning.py over one
  embedding + k-means step (`--clusters`, `--embedder`, `--centres`, `--save-centres`).
"""
from __future__ import annotations

from pipelines.job import load_config, run_job, set_dotted
from transforms.core.config import ConfigError, parse, to_dict
from transforms.core.stage import stage_class

PRUNING = ("balance", "prototypes", "semdedup", "cluster_complexity")
METHODS = ("el2n", "sensitivity", "perplexity", *PRUNING)
DEFAULT_KEEP = {"el2n": "top", "perplexity": "middle"}
PROXY_OPTIONS = {"models": "models", "epochs": "epochs", "steps": "steps",
                 "train_docs": "train_docs", "device": "device", "threads": "threads",
                 "label_field": "label_field"}


def register(subparsers) -> None:
    p = subparsers.add_parser("select", help="data selection: EL2N, perplexity or clustering-"
                              "based sensitivity sampling with importance weights")
    p.add_argument("input", nargs="+", metavar="INPUT", help="input glob(s)")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--keep", choices=("top", "bottom", "middle", "weighted", "all", "easy",
                                      "hard", "farthest", "quality"),
                   help="el2n/perplexity: which documents to keep by score (default: el2n top, "
                   "perplexity middle); weighted = --size draws with p ~ score; all = score only; "
                   "prototypes/cluster_complexity: easy (nearest the prototype) or hard (default); "
                   "semdedup: the survivor of a group, farthest from the centre (default) or "
                   "highest --quality-field")
    p.add_argument("--fraction", type=float, default=0.5, help="top/bottom/middle: share kept")
    p.add_argument("--size", type=int, help="sensitivity and weighted: number of draws m")
    p.add_argument("--label-field", help="el2n: label column for a proxy classifier "
                   "(default: a proxy language model)")
    p.add_argument("--loss-field", help="sensitivity: per-document loss column read at the "
                   "representatives (default: a proxy LM scores them)")
    p.add_argument("--clusters", type=int, help="k of k-means (default: sensitivity --size, "
                   "the pruning methods 100)")
    p.add_argument("--max-per-cluster", type=int, help="balance: T, documents kept per concept")
    p.add_argument("--column", help="balance: a metadata column as the concepts, not clusters")
    p.add_argument("--global", dest="per_cluster", action="store_false", default=True,
                   help="prototypes: keep --fraction of the corpus, not of every cluster")
    p.add_argument("--eps", type=float, help="semdedup: duplicates have cosine >= 1 - eps")
    p.add_argument("--quality-field", help="semdedup --keep quality: the column preferred")
    p.add_argument("--temperature", type=float, help="cluster_complexity: softmax temperature")
    p.add_argument("--neighbours", type=int, help="cluster_complexity: centres in d_inter")
    p.add_argument("--centres", help="k-means centres (.npy/.json) of an earlier job to reuse")
    p.add_argument("--save-centres", action="store_true",
                   help="write the fitted centres to OUTPUT/kmeans_centres.npy")
    p.add_argument("--design", choices=("stratified", "clusters"),
                   help="sensitivity: stratified (default: equal-count strata along the "
                   "embeddings' first principal direction, uniform inside) or clusters (the "
                   "paper's k-means sensitivity values; --clusters, --lambda, --loss-field)")
    p.add_argument("--embedder", choices=("auto", "minilm", "hashed", "char_ngrams"),
                   help="document embeddings (default: char_ngrams for sensitivity's stratified "
                   "design, hashed for its clusters design and the pruning methods; auto: minilm "
                   "when installed)")
    p.add_argument("--lambda", dest="holder_lambda", type=holder_lambda, default="auto",
                   help="sensitivity: weight of the distance term in v(x); a number or auto "
                   "(default: estimated from the representatives' losses)")
    p.add_argument("--models", type=int, help="proxy models from different seeds")
    p.add_argument("--epochs", type=int, help="proxy training epochs (default: 5 for the "
                   "classifier, 2 for the LMs)")
    p.add_argument("--steps", type=int, help="proxy LM: stop after this many optimizer steps")
    p.add_argument("--train-docs", type=int, help="documents sampled to train the proxy")
    p.add_argument("--device", help="proxy device: cpu, cuda, auto")
    p.add_argument("--threads", type=int, help="torch threads per worker process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any job value by dotted key, e.g. stages.0.el2n.proxy.context=64")
    p.set_defaults(func=_run)


def holder_lambda(text: str):
    return text if text == "auto" else float(text)


def proxy_settings(args) -> dict:
    settings = {field: getattr(args, option) for option, field in PROXY_OPTIONS.items()
                if getattr(args, option) is not None}
    return settings | {"seed": args.seed}


def selection_stages(args) -> list[dict]:
    """The job's stages for the chosen method and options."""
    if args.method in PRUNING:
        return pruning_stages(args)
    if args.keep in ("easy", "hard", "farthest", "quality"):
        raise ConfigError(f"--keep {args.keep} is for the pruning methods")
    proxy = proxy_settings(args)
    if args.method == "sensitivity":
        if args.size is None:
            raise ConfigError("--method sensitivity needs --size (the number of draws m)")
        if args.label_field:
            raise ConfigError("--label-field is for --method el2n; sensitivity takes --loss-field")
        stage = {"size": args.size, "seed": args.seed}
        if args.design == "clusters":
            stage |= {"design": "clusters", "holder_lambda": args.holder_lambda}
        elif args.holder_lambda != "auto":
            raise ConfigError("--lambda is for --design clusters")
        if args.clusters is not None:
            stage["clusters"] = args.clusters
        if args.embedder is not None:
            stage["embedding"] = {"model": args.embedder}
        if args.centres:
            stage["centres"] = args.centres
        if args.save_centres:
            stage["save_centres"] = True
        if args.loss_field:
            stage["loss_field"] = args.loss_field
        elif args.design == "clusters":
            stage["proxy"] = proxy | {"models": proxy.get("models", 1)}
        return [{"sensitivity": stage}]
    if args.method == "perplexity" and args.label_field:
        raise ConfigError("--method perplexity uses a proxy language model: drop --label-field")
    stages: list[dict] = [{"el2n": {"proxy": proxy}}]
    keep = args.keep or DEFAULT_KEEP[args.method]
    if keep == "all":
        return stages
    score_field = "el2n" if args.method == "el2n" else "proxy_perplexity"
    select = {"score_field": score_field, "policy": keep, "seed": args.seed}
    if keep == "weighted":
        if args.size is None:
            raise ConfigError("--keep weighted needs --size (the number of draws)")
        select["size"] = args.size
    else:
        select["fraction"] = args.fraction
    return stages + [{"select": select}]


def pruning_stages(args) -> list[dict]:
    """balance, prototypes, semdedup, cluster_complexity: one stage over `clusters:`."""
    method = args.method
    clusters: dict = {"seed": args.seed}
    if args.clusters is not None:
        clusters["k"] = args.clusters
    if args.embedder is not None:
        clusters["embedding"] = {"model": args.embedder}
    if args.centres:
        clusters["centres"] = args.centres
    if args.save_centres:
        clusters["save"] = True
    stage: dict = {"seed": args.seed, "clusters": clusters}
    keep_choices = {"prototypes": ("easy", "hard"), "cluster_complexity": ("easy", "hard"),
                    "semdedup": ("farthest", "quality"), "balance": ()}[method]
    if args.keep is not None:
        if args.keep not in keep_choices:
            allowed = " or ".join(keep_choices) or "no --keep"
            raise ConfigError(f"--method {method} takes {allowed}")
        stage["keep"] = args.keep
    if method == "balance":
        if args.max_per_cluster is None:
            raise ConfigError("--method balance needs --max-per-cluster (T)")
        stage["max_per_cluster"] = args.max_per_cluster
        if args.column:
            stage["column"] = args.column
    if method in ("prototypes", "cluster_complexity"):
        stage["fraction"] = args.fraction
    if method == "prototypes":
        stage["per_cluster"] = args.per_cluster
    if method == "semdedup":
        if args.eps is not None:
            stage["eps"] = args.eps
        if args.quality_field:
            stage["quality_column"] = args.quality_field
    if method == "cluster_complexity":
        if args.temperature is not None:
            stage["temperature"] = args.temperature
        if args.neighbours is not None:
            stage["neighbours"] = args.neighbours
    return [{method: stage}]


def resolved(stages: list[dict]) -> list[dict]:
    """Stages with every default filled in, so the manifest records the complete settings."""
    return [{name: to_dict(parse(stage_class(name).Config, params, where=f"stages.{i}.{name}"))}
            for i, entry in enumerate(stages) for name, params in entry.items()]


def _run(args) -> int:
    data = load_config(None, args.input, args.output)
    data["stages"] = resolved(selection_stages(args))
    for assignment in args.set:
        set_dotted(data, assignment)
    run_job(data, args.beam_args)
    return 0
