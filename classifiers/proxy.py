"""Small proxy models for data selection, trained briefly from several seeds.

EL2N (Paul et al. 2021, "Deep Learning on a Data Diet"): an example's score is
`E_seed || softmax(f(x)) - onehot(y) ||_2`, read from models early in training (a few epochs) and
averaged over independent initialisations. Two proxies:

- `ProxyClassifier` for labelled data (quality or domain labels): a fastText-style bag of hashed
  word n-grams (scikit-learn's `HashingVectorizer`, so no vocabulary to fit or ship) into a low-rank
  linear softmax. The original definition applies as is.
- `ProxyLM` for plain text (Marion et al. 2023, "When Less is More"): a tiny byte-level causal
  transformer; the per-token norm `||p - e_y||_2 = sqrt(1 - 2 p_y + sum_i p_i^2)` is averaged over
  the document, and the same pass gives the mean token cross-entropy and so the perplexity.

Training runs on the CPU at test scale and on `device: cuda` when configured. A trained proxy is
serialised to bytes (`to_bytes`/`load_proxy`) so a Beam job can train it once and hand it to every
worker as a side input.

torch and scikit-learn (the `selection` extra) are imported when a proxy is built, not with this
module, so a stage's config (`ProxyConfig`) parses and its requirement check runs without them.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from classifiers import STRICT_SETTINGS

if TYPE_CHECKING:
    import torch

EL2N, LM_LOSS, PERPLEXITY = "el2n", "lm_loss", "perplexity"
BYTES = 256


@dataclass
class ProxyConfig:
    """How to train a proxy. `label_field` set: classifier on that label; unset: byte-level LM."""

    __pydantic_config__ = STRICT_SETTINGS


    label_field: Optional[str] = None
    models: int = 4              # independent initialisations averaged (the paper suggests ~10)
    seed: int = 0
    device: str = "cpu"          # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    threads: int = 0             # torch CPU threads per process; 0 keeps torch's default
    train_docs: int = 20_000     # documents sampled (uniformly) to train on
    batch_size: int = 32
    learning_rate: Optional[float] = None  # default: 0.1 (classifier, SGD), 3e-3 (LM, AdamW)
    # classifier
    epochs: int = 5
    features: int = 2 ** 16      # hashed n-gram buckets
    ngrams: int = 2              # word n-grams 1..ngrams
    dim: int = 16                # bag embedding width
    max_chars: int = 8_000       # characters of a document the classifier reads
    # language model
    steps: int = 200
    context: int = 128           # bytes per sequence
    width: int = 32
    layers: int = 1
    heads: int = 2
    max_tokens: int = 512        # bytes scored per document (its first max_tokens)


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _set_threads(config: ProxyConfig) -> None:
    import torch

    if config.threads > 0:
        torch.set_num_threads(config.threads)


def _inference_mode(method):
    """`@torch.inference_mode()` that imports torch on the call, not at the definition."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return method(*args, **kwargs)
    return wrapper


def _l2_error(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`||softmax - onehot(target)||_2` along the last axis, via `1 - 2 p_y + sum p^2`."""
    probs = log_probs.exp()
    p_target = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (1 - 2 * p_target + (probs * probs).sum(-1)).clamp_min(0).sqrt()


# --- the networks ------------------------------------------------------------------------------

@functools.cache
def _networks() -> tuple[type, type]:
    """(bag classifier, byte transformer) torch modules, defined on first use."""
    from torch import nn

    class BagClassifier(nn.Module):
        """fastText's architecture: mean of hashed n-gram embeddings, then a linear softmax."""

        def __init__(self, features: int, dim: int, classes: int):
            super().__init__()
            self.bag = nn.EmbeddingBag(features, dim, mode="sum", sparse=True)
            self.head = nn.Linear(dim, classes)

        def forward(self, indices, offsets, weights):
            return self.head(self.bag(indices, offsets, per_sample_weights=weights))

    class ByteTransformer(nn.Module):
        """A tiny pre-norm causal transformer over UTF-8 bytes, output layer tied to the input."""

        def __init__(self, context: int, width: int, layers: int, heads: int):
            super().__init__()
            self.embed = nn.Embedding(BYTES, width)
            self.position = nn.Embedding(context, width)
            layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            length = tokens.shape[1]
            hidden = self.embed(tokens) + self.position.weight[:length]
            mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
            hidden = self.blocks(hidden, mask=mask, is_causal=True)
            return self.norm(hidden) @ self.embed.weight.T

    return BagClassifier, ByteTransformer


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
            for _ in range(self.config.epochs):
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

def _document_bytes(text: str, limit: int) -> np.ndarray:
    return np.frombuffer(text[:limit].encode("utf-8", "replace")[:limit], dtype=np.uint8)


class ProxyLM:
    kind = "lm"

    def __init__(self, config: ProxyConfig, states: Optional[list] = None):
        import torch

        self.config = config
        self.device = resolve_device(config.device)
        self.models = []
        for index in range(config.models):
            torch.manual_seed(config.seed + index)
            model = _networks()[1](config.context, config.width, config.layers, config.heads)
            if states:
                model.load_state_dict(states[index])
            self.models.append(model.to(self.device).eval())

    def train(self, texts: Sequence[str], labels: Optional[Sequence] = None) -> "ProxyLM":
        """`steps` Adam steps per model on random windows of the concatenated documents."""
        import torch

        separator = np.frombuffer(b"\n\n", dtype=np.uint8)
        stream = np.concatenate([part for t in texts for part in
                                 (_document_bytes(t, self.config.max_tokens), separator)])
        span = self.config.context + 1
        if len(stream) < span:
            stream = np.resize(stream, span)
        data = torch.as_tensor(stream, dtype=torch.long, device=self.device)
        for index, model in enumerate(self.models):
            generator = torch.Generator().manual_seed(self.config.seed + index)
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.learning_rate or 3e-3)
            model.train()
            for _ in range(self.config.steps):
                starts = torch.randint(0, len(stream) - span + 1, (self.config.batch_size,),
                                       generator=generator).to(self.device)
                windows = data[starts.unsqueeze(1) + torch.arange(span, device=self.device)]
                logits = model(windows[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, BYTES),
                                                   windows[:, 1:].reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
        return self

    def _windows(self, texts: Sequence[str]):
        """Each document's first `max_tokens` bytes cut into (input, target) windows of `context`.

        Returns inputs and targets (windows, context), a validity mask, and each window's document.
        Consecutive windows overlap by one byte so every byte after the first is predicted once.
        """
        context = self.config.context
        inputs, owners = [], []
        for doc, text in enumerate(texts):
            tokens = _document_bytes(text, self.config.max_tokens + 1)
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

    @_inference_mode
    def _per_model(self, texts: Sequence[str], chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(el2n, token cross-entropy), each (models, documents), NaN for documents under 2 bytes."""
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
        """Per document: EL2N (mean token error norm), mean token cross-entropy and perplexity.

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
    """Train `config.models` proxies from seeds `seed, seed+1, ...` on the given documents."""
    _set_threads(config)
    if config.label_field is None:
        return ProxyLM(config).train(texts)
    pairs = [(t, y) for t, y in zip(texts, labels) if y is not None]
    if not pairs:
        raise ValueError(f"no training document has a '{config.label_field}' label")
    classes = sorted({y for _, y in pairs}, key=lambda c: (str(type(c)), c))
    if len(classes) < 2:
        raise ValueError(f"'{config.label_field}' has a single class {classes}: nothing to learn")
    return ProxyClassifier(config, classes).train([t for t, _ in pairs], [y for _, y in pairs])


def to_bytes(proxy: Proxy) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"kind": proxy.kind, "config": asdict(proxy.config),
                "classes": getattr(proxy, "classes", None), "states": proxy.states()}, buffer)
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
        return ProxyLM(config, saved["states"])
    return ProxyClassifier(config, saved["classes"], saved["states"])
