"""Sizing model for scale-out, measured: CPU-seconds and shuffle bytes per GB of input, rounds of
connected components against cluster diameter, and what 1 TB / 100 TB would take.

    python bench/sizing.py [--parts jobs components estimate] [--scales 1 4 16] [--workers 2]
                           [--chain-sizes 1000 10000 100000 1000000] [--graph-nodes 1000000]
                           [--partitions 2 32 256 1024] [--json results.json]
                           [--cores-per-worker 8] [--efficiency 0.6] [--price 0.05]

`jobs` runs `python -m pipelines run` on the local multi-process runner (as users run it) at
each scale of bench/scale.py's corpus (the 2,504 real Wikipedia revisions of
../shared/data/wiki_versions; copy k has every fifth word replaced, so copies are distinct) with
four configs: ingest+sink only, heuristics, dedup, heuristics+dedup. For each run it measures:

- CPU-seconds of the whole process tree (driver and Beam workers): `os.wait4` rusage of the
  driver, which includes every descendant it waited for, cross-checked against psutil's
  cpu_times of every process seen (sampled every 0.2 s, a lower bound). CPU-seconds, not wall
  time, because the cores are shared with other jobs.
- Spilled bytes in dedup's spill folder of the job's staging area (scanned every 0.2 s, every
  file counted once at its final size): the document batches the sketch step writes and reads
  back once (16-hex-digit names), and the shuffle pieces (uuid names): on the local runner every
  dedup shuffle (exact groups, bands, each connected-components round, labels, clusters) is a
  set of uncompressed Arrow IPC files, so their bytes are the bytes dedup shuffles; on Dataflow,
  Flink or Spark the same tables travel as elements. Decisions (the CoGroupByKey with the
  spilled paths) are not spilled and not counted; they are one small row per dropped document.
- Peak RSS of the tree and the job's counters (largest cluster, hot buckets, edges).

The per-GB cost is the slope of a least-squares line through the scales (the intercept is the
local runner's fixed start-up: imports, worker start, ~1 s per step). A stage's cost is its
config's slope less the ingest+sink slope. Then, in process: the most frequent LSH band key's
share of the documents (the hottest bucket) and the index's bytes per kept document (from a
`sluice dedup --update-index` run).

`components` runs dedup's connected-components code (transforms/dedup/components.py) in process
on synthetic graphs with random 64-bit node ids, as dedup's are: each round is exactly what the
Beam round does (both directions, rows partitioned by the source's hash with dedup's own
`scatter`, `local_stars` per partition, all partitions' outputs together), and the convergence
check is the last pass's (`star_labels` per partition). It reports the rounds needed (the
smallest `cc_rounds` that passes) against the largest component's diameter and `cc_rounds`'
default.

`estimate` turns the measured slopes into CPU-hours, wall time and cost for 1 TB and 100 TB on
N workers; every assumption is a flag and is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import measured_tree  # noqa: E402  (bench/measure.py)
from scale import write_corpus  # noqa: E402  (bench/scale.py)

CONFIGS = {
    "ingest+sink": [],
    "heuristics": [{"heuristics": {"rule_sets": ["gopher_repetition", "gopher_quality",
                                                 "fineweb"]}}],
    "dedup": [{"dedup": {"threshold": 0.8}}],
    "heuristics+dedup": [{"heuristics": {"rule_sets": ["gopher_repetition", "gopher_quality",
                                                       "fineweb"]}},
                         {"dedup": {"threshold": 0.8}}],
}
SPILLED_BATCH = re.compile(r"[0-9a-f]{16}\.arrow")
SHUFFLE_PIECE = re.compile(r"[0-9a-f]{32}\.arrow")


# --- jobs ---------------------------------------------------------------------------------------

def run_measured(command: list[str], output: Path) -> dict:
    """Run a job; CPU-seconds, wall, peak RSS of its tree and the spill folder's bytes."""
    spill: dict[str, int] = {}

    def scan_spill() -> None:
        for staging in output.parent.glob(f"{output.name}.staging-*"):
            for folder, _, files in os.walk(staging):
                if os.path.basename(folder).startswith("spill-"):
                    for name in files:
                        if SPILLED_BATCH.fullmatch(name) or SHUFFLE_PIECE.fullmatch(name):
                            try:
                                spill[os.path.join(folder, name)] = os.path.getsize(
                                    os.path.join(folder, name))
                            except OSError:
                                pass

    result = measured_tree(command, scan_spill, interval=0.2)
    batches = sum(v for k, v in spill.items() if SPILLED_BATCH.fullmatch(os.path.basename(k)))
    return result | {"spilled_batches": batches, "shuffled": sum(spill.values()) - batches}


def write_config(path: Path, stages: list) -> None:
    import yaml
    path.write_text(yaml.safe_dump({"input": [], "output": "unused", "stages": stages}))


def slope(xs, ys) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def hot_band_keys(corpus: Path) -> dict:
    """The hottest LSH bucket among exact-group representatives with shingles, as dedup
    buckets them (25 x 10 bands of 256 permutations at 0.8)."""
    import pyarrow as pa

    from transforms.dedup.minhash import MinHasher, Shingling, band_keys
    from transforms.dedup.stage import DedupConfig, exact_keys

    config = DedupConfig()
    bands, rows = config.band_rows()
    shingling, hasher = Shingling(config.ngram), MinHasher(config.num_perm, config.seed)
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    keys, exact, shingled = [], [], []
    for lo in range(0, len(texts), 1000):
        column = pa.array(texts[lo:lo + 1000])
        tokens = shingling.tokens(column)
        hi, low = exact_keys(column, tokens, shingling)
        hashes, offsets = shingling.shingle_hashes(tokens)
        keys.append(band_keys(hasher.signatures(hashes, offsets), bands, rows))
        exact.append(np.stack([hi, low], 1))
        shingled.append(np.diff(offsets) > 0)
    keys, exact, shingled = np.concatenate(keys), np.concatenate(exact), np.concatenate(shingled)
    _, first = np.unique(exact, axis=0, return_index=True)
    representative = np.zeros(len(texts), bool)
    representative[first] = True
    keys = keys[representative & shingled]
    biggest, hot = 0, 0
    for band in range(keys.shape[1]):
        _, counts = np.unique(keys[:, band], return_counts=True)
        biggest = max(biggest, int(counts.max()))
        hot += int((counts > config.all_pairs_bucket).sum())
    return {"documents": len(texts), "representatives": len(keys), "largest_bucket": biggest,
            "largest_bucket_share": biggest / max(1, len(keys)), "buckets_over_64": hot}


def index_bytes_per_document(corpus: Path, work: Path, workers: int) -> dict:
    index, out = work / "index", work / "index-run"
    subprocess.run([sys.executable, "-m", "pipelines", "dedup", str(corpus), "--output", str(out),
                    "--index", str(index), "--update-index", f"--direct_num_workers={workers}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ | {"SLUICE_QUIET": "1"})
    kept = json.loads((out / "stats.json").read_text())["kept"]
    size = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
    return {"kept": kept, "index_bytes": size, "bytes_per_kept": size / kept}


def jobs(args, work: Path) -> dict:
    results: dict = {"runs": [], "workers": args.workers}
    for scale in args.scales:
        corpus = work / f"corpus-{scale}x.jsonl"
        docs = write_corpus(corpus, scale)
        gb = corpus.stat().st_size / 1e9
        for name, stages in CONFIGS.items():
            if name not in args.configs:
                continue
            config = work / f"{name}.yaml"
            write_config(config, stages)
            output = work / f"out-{name}-{scale}"
            run = run_measured([sys.executable, "-m", "pipelines", "run", str(config), "--input",
                                str(corpus), "--output", str(output),
                                f"--direct_num_workers={args.workers}"], output)
            stats = json.loads((output / "stats.json").read_text())
            counters = stats.get("counters", {})
            run.update(config=name, scale=scale, docs=docs, gb=gb, kept=stats["kept"],
                       largest_cluster=counters.get("dedup.largest_cluster"),
                       hot_buckets=counters.get("dedup.hot_buckets", 0),
                       edges=counters.get("dedup.edges"))
            results["runs"].append(run)
            shutil.rmtree(output, ignore_errors=True)
            print(f"  {name} {scale}x: cpu {run['cpu']:.1f} s (sampled {run['cpu_sampled']:.1f})"
                  f", wall {run['wall']:.1f} s", file=sys.stderr, flush=True)
    first, last = work / f"corpus-{args.scales[0]}x.jsonl", work / f"corpus-{args.scales[-1]}x.jsonl"
    results["docs_per_gb"] = write_corpus(first, args.scales[0]) / (first.stat().st_size / 1e9)
    results["hot_keys"] = {args.scales[0]: hot_band_keys(first)}
    if last != first:
        results["hot_keys"][args.scales[-1]] = hot_band_keys(last)
    results["index"] = index_bytes_per_document(first, work, args.workers)
    return results


def print_jobs(results: dict) -> dict:
    runs = results["runs"]
    print(f"\n## Jobs: local runner, {results['workers']} worker processes; CPU = user+system "
          f"seconds of the driver and its workers (rusage); shuffle = dedup's spilled shuffle "
          f"pieces (uncompressed Arrow IPC)")
    print(f"{'config':<17} {'scale':>5} {'docs':>7} {'MB':>7} {'CPU s':>7} {'(sampled)':>9} "
          f"{'wall s':>7} {'peak MiB':>8} {'batches MB':>10} {'shuffle MB':>10} "
          f"{'largest cl.':>11} {'hot bkts':>8}")
    for r in runs:
        print(f"{r['config']:<17} {r['scale']:>4}x {r['docs']:>7} {r['gb'] * 1e3:>7.1f} "
              f"{r['cpu']:>7.1f} {r['cpu_sampled']:>9.1f} {r['wall']:>7.1f} {r['peak_mib']:>8.0f} "
              f"{r['spilled_batches'] / 1e6:>10.1f} {r['shuffled'] / 1e6:>10.1f} "
              f"{r['largest_cluster'] if r['largest_cluster'] is not None else '-':>11} "
              f"{r['hot_buckets']:>8}")
    fits = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        if len(mine) < 2:
            continue
        fixed, per_gb = slope([r["gb"] for r in mine], [r["cpu"] for r in mine])
        _, shuffle_per_gb = slope([r["gb"] for r in mine], [r["shuffled"] for r in mine])
        _, batches_per_gb = slope([r["gb"] for r in mine], [r["spilled_batches"] for r in mine])
        fits[name] = {"fixed_cpu": fixed, "cpu_per_gb": per_gb, "shuffle_per_gb": shuffle_per_gb,
                      "batches_per_gb": batches_per_gb}
    base = fits.get("ingest+sink", {}).get("cpu_per_gb", 0.0)
    print("\nPer GB of input (least-squares slope over the scales; 'fixed' is the intercept: "
          "the local runner's start-up, not paid per GB)")
    print(f"{'config':<17} {'fixed CPU s':>11} {'CPU s/GB':>9} {'stage CPU s/GB':>14} "
          f"{'shuffle GB/GB':>13} {'batch spill GB/GB':>17}")
    for name, f in fits.items():
        stage = f["cpu_per_gb"] - base if name != "ingest+sink" else f["cpu_per_gb"]
        print(f"{name:<17} {f['fixed_cpu']:>11.1f} {f['cpu_per_gb']:>9.0f} {stage:>14.0f} "
              f"{f['shuffle_per_gb'] / 1e9:>13.3f} {f['batches_per_gb'] / 1e9:>17.3f}")
    print(f"\ncorpus: {results['docs_per_gb']:,.0f} documents per GB")
    for scale, h in results["hot_keys"].items():
        print(f"hottest LSH bucket at {scale}x: {h['largest_bucket']} of {h['representatives']:,} "
              f"representatives ({100 * h['largest_bucket_share']:.3f}%), buckets over 64 "
              f"members: {h['buckets_over_64']}")
    ix = results["index"]
    print(f"index: {ix['index_bytes']:,} bytes for {ix['kept']:,} kept documents = "
          f"{ix['bytes_per_kept']:.0f} bytes per kept document")
    return fits


# --- components ---------------------------------------------------------------------------------

def random_ids(n: int, salt: int = 12345) -> np.ndarray:
    from transforms.dedup.minhash import fmix64
    return fmix64(np.arange(n, dtype=np.uint64) + np.uint64(salt))


def graphs(chain_sizes: list[int], n: int, rng: np.random.Generator):
    """(name, u, v) as node indices; ids are drawn later."""
    for size in chain_sizes:
        yield f"chain {size:,}", np.arange(size - 1), np.arange(1, size)
    yield f"star {n:,}", np.zeros(n - 1, np.int64), np.arange(1, n)
    side = int(math.isqrt(n))
    grid = np.arange(side * side).reshape(side, side)
    yield (f"grid {side}x{side}", np.r_[grid[:, :-1].ravel(), grid[:-1, :].ravel()],
           np.r_[grid[:, 1:].ravel(), grid[1:, :].ravel()])
    child = np.arange(1, n)
    yield f"random tree {n:,}", (rng.random(n - 1) * child).astype(np.int64), child
    for degree in (1.5, 3.0):
        m = int(degree * n / 2)
        yield (f"random G(n, {degree}n/2) {n:,}", rng.integers(0, n, m), rng.integers(0, n, m))


def largest_component_diameter(n: int, u: np.ndarray, v: np.ndarray) -> tuple[int, int, bool]:
    """(size, diameter, exact) of the largest component: double-sweep BFS, exact on trees,
    a lower bound otherwise."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, shortest_path

    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    big = int(sizes.argmax())
    start = int(np.flatnonzero(labels == big)[0])
    far = start
    distance = 0
    for _ in range(2):
        d = shortest_path(graph, directed=False, unweighted=True, indices=far)
        d[~np.isfinite(d)] = -1
        far, distance = int(d.argmax()), int(d.max())
    loops = len(u) - (n - len(sizes))  # edges beyond a spanning forest
    return int(sizes[big]), distance, loops <= 0


def rounds_needed(u_ids: np.ndarray, v_ids: np.ndarray, partitions: int, cap: int) -> int:
    """Rounds dedup's connected components need on these edges: the smallest `cc_rounds` whose
    last pass finds every node in a star (None past `cap`)."""
    import pyarrow as pa

    from transforms.dedup.components import both_directions, edge_table, local_stars, star_labels
    from transforms.dedup.shuffle import column, scatter

    def partitions_of(edges):
        edges = both_directions(edges)
        return [piece for _, piece in scatter(edges, column(edges, "u"), partitions)]

    edges = edge_table(u_ids, v_ids)
    for done in range(cap + 1):
        if not sum(star_labels(p)[1] for p in partitions_of(edges)):
            return done
        edges = pa.concat_tables([local_stars(p) for p in partitions_of(edges)])
    return None


def components(args) -> list[dict]:
    from transforms.dedup.stage import DedupConfig

    rng = np.random.default_rng(0)
    rows = []
    print("\n## Connected components: rounds needed vs the largest cluster's diameter "
          "(dedup's own round and check, in process, random 64-bit node ids)")
    print(f"{'graph':<28} {'largest':>9} {'diameter':>9} " + " ".join(
        f"{f'P={p}':>10}" for p in args.partitions))
    print(f"{'(default cc_rounds)':<48} " + " ".join(
        f"{DedupConfig().components_rounds(p):>10}" for p in args.partitions))
    for name, u, v in graphs(args.chain_sizes, args.graph_nodes, rng):
        n = int(max(u.max(), v.max())) + 1
        keep = u != v
        u, v = u[keep], v[keep]
        size, diameter, exact = largest_component_diameter(n, u, v)
        ids = random_ids(n)
        row = {"graph": name, "largest": size, "diameter": diameter, "exact": exact,
               "rounds": {}, "cpu": {}}
        for p in args.partitions:
            start = time.process_time()
            row["rounds"][p] = rounds_needed(ids[u], ids[v], p, args.max_rounds)
            row["cpu"][p] = time.process_time() - start
        rows.append(row)
        cells = " ".join(
            f"{(str(r) if r is not None else f'>{args.max_rounds}') + ('' if r is None or r <= DedupConfig().components_rounds(p) else '!'):>10}"
            for p, r in row["rounds"].items())
        print(f"{name:<28} {size:>9,} {('' if exact else '>=') + str(diameter):>9} {cells}",
              flush=True)
    print("(! = more than the default cc_rounds: the run would fail, asking for more rounds; "
          ">= : double-sweep BFS lower bound on a graph with cycles)")
    print("CPU s per graph at each P: " + "; ".join(
        f"{r['graph']}: " + ", ".join(f"{c:.1f}" for c in r["cpu"].values()) for r in rows))
    return rows


# --- estimate -----------------------------------------------------------------------------------

def estimate(args, fits: dict, rows: list[dict]) -> None:
    from transforms.dedup.stage import DedupConfig

    print("\n## Estimate for 1 TB and 100 TB (heuristics+dedup unless noted)")
    print(f"assumptions: {args.cores_per_worker} vCPUs per worker; parallel efficiency "
          f"{args.efficiency} (share of the workers' vCPU time spent on the measured per-GB work; "
          f"covers shuffle I/O, stragglers, start-up); price ${args.price} per vCPU-hour "
          f"(EXAMPLE value, not a quote); CPU per GB = this machine's measured slope "
          f"(one vCPU here = one vCPU there); partitions = 2 x total vCPUs")
    for name in ("heuristics+dedup", "dedup"):
        f = fits.get(name)
        if not f:
            continue
        print(f"\n{name}: {f['cpu_per_gb']:.0f} CPU s/GB, shuffle {f['shuffle_per_gb'] / 1e9:.3f} "
              f"GB/GB, document spill {f['batches_per_gb'] / 1e9:.3f} GB/GB (written and read "
              f"once)")
        print(f"{'input':>6} {'workers':>7} {'vCPUs':>6} {'CPU h':>8} {'wall h':>7} "
              f"{'cost $':>8} {'shuffle TB':>10} {'partitions':>10} {'cc_rounds':>9}")
        for tb in (1, 100):
            cpu_hours = f["cpu_per_gb"] * tb * 1000 / 3600
            for workers in args.cluster_workers:
                vcpus = workers * args.cores_per_worker
                wall = cpu_hours / (vcpus * args.efficiency)
                cost = wall * vcpus * args.price
                partitions = 2 * vcpus
                print(f"{tb:>4} TB {workers:>7} {vcpus:>6} {cpu_hours:>8.0f} {wall:>7.2f} "
                      f"{cost:>8.0f} {f['shuffle_per_gb'] * tb * 1000 / 1e12:>10.2f} "
                      f"{partitions:>10} {DedupConfig().components_rounds(partitions):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["jobs", "components", "estimate"],
                        choices=["jobs", "components", "estimate"])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chain-sizes", type=int, nargs="+",
                        default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--graph-nodes", type=int, default=1000000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 32, 256, 1024])
    parser.add_argument("--max-rounds", type=int, default=40)
    parser.add_argument("--cores-per-worker", type=int, default=8)
    parser.add_argument("--efficiency", type=float, default=0.6)
    parser.add_argument("--price", type=float, default=0.05,
                        help="USD per vCPU-hour (an example value; use your provider's)")
    parser.add_argument("--cluster-workers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--json", help="write the measured results here")
    parser.add_argument("--from-json", help="read earlier measured results (skip those parts)")
    args = parser.parse_args()
    results = json.loads(Path(args.from_json).read_text()) if args.from_json else {}
    work = Path(tempfile.mkdtemp(prefix="sluice-sizing-"))
    try:
        if "jobs" in args.parts:
            results["jobs"] = jobs(args, work)
        if "components" in args.parts:
            results["components"] = components(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fits = print_jobs(results["jobs"]) if "jobs" in results else {}
    if "components" in results and "components" not in args.parts:
        print("\n(components table: see the earlier run)")
    if "estimate" in args.parts and fits:
        estimate(args, fits, results.get("components", []))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
