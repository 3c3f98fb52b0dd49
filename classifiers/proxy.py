"""Small proxy models for data selection, trained briefly from several seeds.

EL2N (Paul et al. 2021, "Deep Learning on a Data Diet"): an example's score is
`E_seed || softmax(f(x)) - onehot(y) ||_2`, read from models early in training (a few epochs) on
the examples they train on, averaged over independent initialisations. Two proxies:

- `ProxyClassifier` for labelled data (quality or domain labels): a fastText-style bag of hashed
  word n-grams (scikit-learn's `HashingVectorizer`, so no vocabulary to fit or ship) into a low-rank
  linear softmax. The original definition applies as is.
- `ProxyLM` for plain text (Marion et al. 2023, "When Less is More"): a small causal transformer
  over byte-level BPE tokens (a `vocab`-sized tokenizer trained on the same sample with the
  `tokenizers` library; `lm: bytes` reads raw UTF-8 bytes instead). Each document's first
  `max_tokens` tokens are its training example; after `epochs` passes over the sample the per-token
  norm `||p - e_y||_2 = sqrt(1 - 2 p_y + sum_i p_i^2)` is averaged over the document, and the same
  pass gives the mean token cross-entropy (nats per token) and so the perplexity.

Each training run ends by scoring its own training documents with every model and recording the
rank stability across seeds (`TrainingReport`): the mean pairwise Spearman correlation between the
seeds' scores, and what it predicts for the average of all seeds (Spearman-Brown).

Training runs on `device` (`auto`: a GPU when present). A trained proxy is serialised to bytes
(`to_bytes`/`load_proxy`) so a Beam job can train it once and hand it to every worker as a side
input. torch, tokenizers and scikit-learn (the `selection` extra) are imported when a proxy is
built, not with this module, so a stage's config (`ProxyConfig`) parses and its requirement check
runs without them.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np

from classifiers import STRICT_SETTINGS

if TYPE_CHECKING:
    import torch

EL2N, LM_LOSS, PERPLEXITY = "el2n", "lm_loss", "perplexity"
BYTES = 256
CHARS_PER_TOKEN = 8  # characters read per BPE token scored: ample for English (about 4 per token)


@dataclass
class ProxyConfig:
    """How to train a proxy. `label_field` set: classifier on that label; unset: the `lm`."""

    __pydantic_config__ = STRICT_SETTINGS

    label_field: Optional[str] = None
    lm: Literal["tokens", "bytes"] = "tokens"  # unlabelled text: BPE-token LM, or byte LM
    models: int = 4              # independent initialisations averaged (the paper suggests ~10)
    seed: int = 0
    device: str = "auto"         # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    threads: int = 0             # torch CPU threads per process; 0 keeps torch's default
    train_docs: int = 20_000     # documents sampled (uniformly) to train on
    batch_size: int = 32         # documents (classifier) or windows (LM) per step
    learning_rate: Optional[float] = None  # default: 0.1 (classifier, SGD), 1e-3 (LM, AdamW)
    epochs: Optional[int] = None  # passes over the sample before scoring; default 5 (classifier), 2 (LM)
    steps: Optional[int] = None  # LM: stop after this many optimizer steps per model instead
    # classifier
    features: int = 2 ** 16      # hashed n-gram buckets
    ngrams: int = 2              # word n-grams 1..ngrams
    dim: int = 16                # bag embedding width
    max_chars: int = 8_000       # characters of a document the classifier reads
    # language model (tokens: BPE tokens; bytes: UTF-8 bytes)
    vocab: int = 4096            # BPE vocabulary trained on the sample (lm: tokens)
    context: int = 256           # tokens per window
    width: int = 256
    layers: int = 4
    heads: int = 4
    max_tokens: int = 256        # tokens trained on and scored per document (its first ones)

    @property
    def text_chars(self) -> int:
        """Characters of a document the proxy reads (the rest never reaches it)."""
        if self.label_field is not None:
            return self.max_chars
        return self.max_tokens * (CHARS_PER_TOKEN if self.lm == "tokens" else 1)

    def epochs_or_default(self) -> int:
        return self.epochs if self.epochs is not None else (5 if self.label_field else 2)


@dataclass
class TrainingReport:
    """What a training run measured on its own sample; travels with the serialised proxy."""

    train_docs: int
    seconds: float
    rank_stability: Optional[float]          # mean pairwise Spearman between seeds' scores
    rank_stability_of_mean: Optional[float]  # Spearman-Brown: two independent `models`-averages
    parameters: int                          # per model
    vocab: Optional[int] = None              # LM: tokens in the vocabulary

    def describe(self) -> str:
        stability = ("n/a (one model)" if self.rank_stability is None else
                     f"{self.rank_stability:.3f} between seeds, "
                     f"{self.rank_stability_of_mean:.3f} predicted for their mean")
        return (f"trained on {self.train_docs} documents in {self.seconds:.1f}s "
                f"({self.parameters:,} parameters per model); EL2N rank stability {stability}")


def seed_rank_stability(per_model: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    """(mean pairwise Spearman between the rows, the Spearman-Brown prediction for the mean of
    all rows) over the columns scored by every row; (None, None) with one row or < 3 columns."""
    from scipy.stats import spearmanr

    scored = per_model[:, np.isfinite(per_model).all(0)]
    models = scored.shape[0]
    if models < 2 or scored.shape[1] < 3:
        return None, None
    rho = spearmanr(scored, axis=1)[0]  # a number for two rows, else the matrix
    pairwise = float(rho if models == 2 else np.nanmean(rho[np.triu_indices(models, 1)]))
    return pairwise, models * pairwise / (1 + (models - 1) * pairwise)


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _set_threads(config: ProxyConfig) -> None:
    import torch

    if config.threads > 0:
        torch.set_num_threads(config.threads)


@contextlib.contextmanager
def _flushed_denormals():
    """Flush denormal floats to zero while a proxy computes: on the CPU the transformer's backward
    pass otherwise runs about 8x slower (measured, d 256, 4 layers) once values turn subnormal."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _inference_mode(method):
    """`@torch.inference_mode()` that imports torch on the call, not at the definition."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode(), _flushed_denormals():
            return method(*args, **kwargs)
    return wrapper


def _l2_error(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`||softmax - onehot(target)||_2` along the last axis, via `1 - 2 p_y + sum p^2`."""
    probs = log_probs.exp()
    p_target = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (1 - 2 * p_target + (probs * probs).sum(-1)).clamp_min(0).sqrt()


def _parameters(models: list) -> int:
    return sum(p.numel() for p in models[0].parameters()) if models else 0


# --- the networks ------------------------------------------------------------------------------

@functools.cache
def _networks() -> tuple[type, type]:
    """(bag classifier, causal transformer) torch modules, defined on first use."""
    from torch import nn

    class BagClassifier(nn.Module):
        """fastText's architecture: mean of hashed n-gram embeddings, then a linear softmax."""

        def __init__(self, features: int, dim: int, classes: int):
            super().__init__()
            self.bag = nn.EmbeddingBag(features, dim, mode="sum", sparse=True)
            self.head = nn.Linear(dim, classes)

        def forward(self, indices, offsets, weights):
            return self.head(self.bag(indices, offsets, per_sample_weights=weights))

    class CausalTransformer(nn.Module):
        """A small pre-norm causal transformer with learned positions, output layer tied to the
        input embedding (so the vocabulary costs `vocab * width` parameters once)."""

        def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.position = nn.Embedding(context, width)
            layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
            for embedding in (self.embed, self.position):  # GPT-2's init: N(0, 1) embeddings
                nn.init.normal_(embedding.weight, std=0.02)  # give tied logits of std ~sqrt(width)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            length = tokens.shape[1]
            hidden = self.embed(tokens) + self.position.weight[:length]
            mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
            hidden = self.blocks(hidden, mask=mask, is_causal=True)
            return self.norm(hidden) @ self.embed.weight.T

    return BagClassifier, CausalTransformer


# --- classifier -------------------------------------------------------------------------------

class ProxyClassifier:
    kind = "classifier"

    def __init__(self, config: ProxyConfig, classes: list, states: Optional[list] = None):
        import torch
        from sklearn.feature_extraction.text import HashingVectorizer

        self.config = config
        self.classes = list(classes)
        self.device = resolve_device(config.device)
        self.vectorizer = HashingVectorizer(n_features=config.features,
                                            ngram_range=(1, config.ngrams), alternate_sign=False,
                                            norm="l2", dtype=np.float32)
        self.models = []
        for index in range(config.models):
            torch.manual_seed(config.seed + index)
            model = _networks()[0](config.features, config.dim, len(self.classes))
            if states:
                model.load_state_dict(states[index])
            self.models.append(model.to(self.device))

    def _matrix(self, texts: Sequence[str]):
        return self.vectorizer.transform([t[: self.config.max_chars] for t in texts])

    def _tensors(self, matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR rows as EmbeddingBag input: bucket indices, row offsets, l2-normalised counts."""
        import torch

        return (torch.as_tensor(matrix.indices, dtype=torch.long, device=self.device),
                torch.as_tensor(matrix.indptr[:-1], dtype=torch.long, device=self.device),
                torch.as_tensor(matrix.data, dtype=torch.float32, device=self.device))

    def _targets(self, labels: Sequence) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(label, -1) for label in labels], dtype=np.int64)

    def train(self, texts: Sequence[str], labels: Sequence) -> "ProxyClassifier":
        import torch

        matrix = self._matrix(texts)
        targets = torch.as_tensor(self._targets(labels), device=self.device)
        for index, model in enumerate(self.models):
            generator = np.random.default_rng(self.config.seed + index)
            optimizer = torch.optim.SGD(model.parameters(), lr=self.config.learning_rate or 0.1)
            for _ in range(self.config.epochs_or_default()):
                order = generator.permutation(matrix.shape[0])
                for start in range(0, len(order), self.config.batch_size):
                    rows = order[start:start + self.config.batch_size]
                    logits = model(*self._tensors(matrix[rows]))
                    loss = torch.nn.functional.cross_entropy(logits, targets[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        return self

    @_inference_mode
    def per_model_scores(self, texts: Sequence[str], labels: Sequence) -> np.ndarray:
        """EL2N of each model, (models, examples); NaN where the label is missing or unseen."""
        import torch

        targets = self._targets(labels)
        known = targets >= 0
        scores = np.full((len(self.models), len(texts)), np.nan)
        if known.any():
            inputs = self._tensors(self._matrix([t for t, k in zip(texts, known) if k]))
            target = torch.as_tensor(targets[known], device=self.device)
            for index, model in enumerate(self.models):
                log_probs = torch.log_softmax(model(*inputs), -1)
                scores[index, known] = _l2_error(log_probs, target).cpu().numpy()
        return scores

    def score(self, texts: Sequence[str], labels: Sequence) -> dict[str, np.ndarray]:
        """EL2N per example, averaged over the models."""
        return {EL2N: self.per_model_scores(texts, labels).mean(0)}

    def states(self) -> list:
        return [{k: v.cpu() for k, v in m.state_dict().items()} for m in self.models]


# --- language model ---------------------------------------------------------------------------

def train_tokenizer(texts: Sequence[str], vocab: int) -> str:
    """A byte-level BPE tokenizer (GPT-2 style: no unknown token) trained on `texts`, as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


class _Bytes:
    """UTF-8 bytes as tokens: the `lm: bytes` proxy's tokenizer."""

    def get_vocab_size(self) -> int:
        return BYTES

    def ids(self, texts: Sequence[str], limit: int) -> list[np.ndarray]:
        return [np.frombuffer(t[:limit].encode("utf-8", "replace")[:limit], dtype=np.uint8)
                for t in texts]


class _Bpe:
    def __init__(self, serialised: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(serialised)

    def get_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def ids(self, texts: Sequence[str], limit: int) -> list[np.ndarray]:
        chars = limit * CHARS_PER_TOKEN
        encoded = self.tokenizer.encode_batch_fast([t[:chars] for t in texts],
                                                   add_special_tokens=False)
        return [np.asarray(e.ids[:limit], dtype=np.int64) for e in encoded]


class ProxyLM:
    """`models` causal LMs from seeds `seed, seed+1, ...` over one tokenizer (`None`: bytes)."""

    kind = "lm"

    def __init__(self, config: ProxyConfig, tokenizer: Optional[str] = None,
                 states: Optional[list] = None):
        import torch

        self.config = config
        self.tokenizer_json = tokenizer
        self.tokenizer = _Bpe(tokenizer) if tokenizer is not None else _Bytes()
        self.device = resolve_device(config.device)
        self.models = []
        for index in range(config.models):
            torch.manual_seed(config.seed + index)
            model = _networks()[1](self.tokenizer.get_vocab_size(), config.context, config.width,
                                   config.layers, config.heads)
            if states:
                model.load_state_dict(states[index])
            self.models.append(model.to(self.device).eval())

    def _windows(self, texts: Sequence[str]):
        """Each document's first `max_tokens` tokens cut into (input, target) windows of `context`.

        Returns inputs and targets (windows, context), a validity mask, and each window's document.
        Consecutive windows overlap by one token so every token after the first is predicted once.
        """
        context = self.config.context
        inputs, owners = [], []
        for doc, tokens in enumerate(self.tokenizer.ids(texts, self.config.max_tokens + 1)):
            if len(tokens) < 2:
                continue
            count = math.ceil((len(tokens) - 1) / context)
            padded = np.full(count * context + 1, -1, dtype=np.int64)
            padded[: len(tokens)] = tokens
            starts = np.arange(count) * context
            inputs.append(padded[starts[:, None] + np.arange(context + 1)])
            owners.append(np.full(count, doc))
        if not inputs:
            return None
        windows = np.concatenate(inputs)
        valid = windows[:, 1:] >= 0
        windows = np.where(windows < 0, 0, windows)
        return windows[:, :-1], windows[:, 1:], valid, np.concatenate(owners)

    def train(self, texts: Sequence[str], labels: Optional[Sequence] = None) -> "ProxyLM":
        """`epochs` shuffled passes (or `steps` AdamW steps) per model over the documents' windows:
        the windows scored afterwards are exactly the ones trained on (Paul et al.)."""
        import torch

        windows = self._windows(texts)
        if windows is None:
            raise ValueError("no training document has two tokens")
        inputs, targets, valid, _ = (torch.as_tensor(a, device=self.device) for a in windows)
        targets = targets.masked_fill(~valid, -100)  # cross_entropy's ignore_index
        per_epoch = math.ceil(len(inputs) / self.config.batch_size)
        total = self.config.steps or per_epoch * self.config.epochs_or_default()
        for index, model in enumerate(self.models):
            generator = torch.Generator().manual_seed(self.config.seed + index)
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.learning_rate or 1e-3)
            order = torch.zeros(0, dtype=torch.long)
            model.train()
            with _flushed_denormals():
                for step in range(total):
                    if step % per_epoch == 0:
                        order = torch.randperm(len(inputs), generator=generator).to(self.device)
                    rows = order[(step % per_epoch) * self.config.batch_size:][
                        : self.config.batch_size]
                    logits = model(inputs[rows])
                    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                             targets[rows].flatten())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            model.eval()
        return self

    @_inference_mode
    def _per_model(self, texts: Sequence[str], chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(el2n, token cross-entropy), each (models, documents), NaN for documents under 2 tokens."""
        import torch

        shape = (len(self.models), len(texts))
        error_sum, loss_sum, tokens = np.zeros(shape), np.zeros(shape), np.zeros(len(texts))
        windows = self._windows(texts)
        if windows is None:
            return np.full(shape, np.nan), np.full(shape, np.nan)
        inputs, targets, valid, owners = windows
        np.add.at(tokens, owners, valid.sum(1))
        for start in range(0, len(inputs), chunk):
            part = slice(start, start + chunk)
            x = torch.as_tensor(inputs[part], device=self.device)
            y = torch.as_tensor(targets[part], device=self.device)
            mask = torch.as_tensor(valid[part], device=self.device)
            for index, model in enumerate(self.models):
                log_probs = torch.log_softmax(model(x).float(), -1)
                error = (_l2_error(log_probs, y) * mask).sum(1).cpu().numpy()
                loss = (-log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1) * mask).sum(1)
                np.add.at(error_sum[index], owners[part], error)
                np.add.at(loss_sum[index], owners[part], loss.cpu().numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            return error_sum / tokens, loss_sum / tokens

    def score(self, texts: Sequence[str], labels: Optional[Sequence] = None) -> dict[str, np.ndarray]:
        """Per document: EL2N (mean token error norm), mean token cross-entropy (nats per token,
        or per byte for `lm: bytes`) and perplexity.

        All averaged over the models; perplexity is `exp` of the averaged cross-entropy.
        """
        errors, losses = self._per_model(texts)
        loss = losses.mean(0)
        return {EL2N: errors.mean(0), LM_LOSS: loss, PERPLEXITY: np.exp(loss)}

    def per_model_scores(self, texts: Sequence[str], labels: Optional[Sequence] = None) -> np.ndarray:
        return self._per_model(texts)[0]

    def states(self) -> list:
        return [{k: v.cpu() for k, v in m.state_dict().items()} for m in self.models]


Proxy = ProxyClassifier | ProxyLM


def train_proxy(texts: Sequence[str], labels: Optional[Sequence], config: ProxyConfig) -> Proxy:
    """Train `config.models` proxies from seeds `seed, seed+1, ...` on the given documents, then
    score those documents with each model for the rank stability (`proxy.report`)."""
    _set_threads(config)
    start = time.perf_counter()
    if config.label_field is None:
        tokenizer = train_tokenizer(texts, config.vocab) if config.lm == "tokens" else None
        proxy: Proxy = ProxyLM(config, tokenizer).train(texts)
    else:
        pairs = [(t, y) for t, y in zip(texts, labels) if y is not None]
        if not pairs:
            raise ValueError(f"no training document has a '{config.label_field}' label")
        classes = sorted({y for _, y in pairs}, key=lambda c: (str(type(c)), c))
        if len(classes) < 2:
            raise ValueError(f"'{config.label_field}' has a single class {classes}: "
                             "nothing to learn")
        texts, labels = [t for t, _ in pairs], [y for _, y in pairs]
        proxy = ProxyClassifier(config, classes).train(texts, labels)
    stability = seed_rank_stability(proxy.per_model_scores(texts, labels))
    proxy.report = TrainingReport(
        train_docs=len(texts), seconds=round(time.perf_counter() - start, 3),
        rank_stability=stability[0], rank_stability_of_mean=stability[1],
        parameters=_parameters(proxy.models),
        vocab=proxy.tokenizer.get_vocab_size() if isinstance(proxy, ProxyLM) else None)
    return proxy


def to_bytes(proxy: Proxy, metadata: Optional[dict] = None) -> bytes:
    """The proxy's models, tokenizer, config and training report; `metadata` (plain values)
    travels with them, as `proxy.metadata` after `load_proxy`."""
    import torch

    report = getattr(proxy, "report", None)
    buffer = io.BytesIO()
    torch.save({"kind": proxy.kind, "config": asdict(proxy.config),
                "classes": getattr(proxy, "classes", None),
                "tokenizer": getattr(proxy, "tokenizer_json", None), "states": proxy.states(),
                "report": asdict(report) if report else None, "metadata": metadata or {}}, buffer)
    return buffer.getvalue()


def load_proxy(data: bytes, device: Optional[str] = None, threads: Optional[int] = None) -> Proxy:
    """A proxy from `to_bytes`, optionally moved to another device."""
    import torch

    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    config_data = saved["config"] | ({"device": device} if device else {}) | (
        {"threads": threads} if threads is not None else {})
    config = ProxyConfig(**config_data)
    _set_threads(config)
    if saved["kind"] == "lm":
        proxy: Proxy = ProxyLM(config, saved["tokenizer"], saved["states"])
    else:
        proxy = ProxyClassifier(config, saved["classes"], saved["states"])
    proxy.report = TrainingReport(**saved["report"]) if saved["report"] else None
    proxy.metadata = saved["metadata"]
    return proxy
