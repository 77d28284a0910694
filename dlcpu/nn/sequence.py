"""Sequence-model layers of dlcpu.nn: Embedding, a vocabulary projection fused with its softmax
cross-entropy, and a GNMT-style LSTM model built from them.

    model = nn.gnmt(vocab=8192, hidden=512, layers=4)
    loss = model.loss(ids, targets)          # ids, targets: (T, N) int token ids; mean over tokens
    model.backward()                         # gradients of that loss (dloss = 1.0)
    opt.step(); opt.zero_grad()

Design:
  - Embedding looks rows up with one gather and scatters their gradients back with np.add.at;
    token ids are checked against the vocabulary before any lookup (an id out of range is an
    error naming it, never a read outside the table).
  - LinearCrossEntropy never forms a dense (T*N, V) float64 array: the float32 logits come from
    one GEMM, then each block of BLOCK_ROWS tokens takes its softmax and loss while it is in
    cache (float64 only for the per-token sums), and in training mode the block's gradient
    (softmax - onehot) / tokens is written over its logits in place; the backward is two GEMMs
    (dh = dZ W, dW = dZ^T h) and a column sum.
  - GNMT (Wu et al., 2016, the encoder's layout): a bidirectional first LSTM layer (hidden/2 per
    direction, concatenated), then unidirectional layers, with residual connections from the
    third layer on; the recurrent layers keep their weights in the kernels' layout (nn.LSTM).
Names follow a PyTorch twin with embedding, encoder.{i} (torch.nn.LSTM each) and classifier.
"""
import numpy as np

from ..gemm import matmul, pack_matmul_operand
from .module import Module, Parameter, _take, check_float32, check_int, check_ints, check_parameter_memory, register
from .recurrent import LSTM

#: tokens per block of the fused vocabulary softmax: 32 rows of an 8k vocabulary are 1 MiB of
#: float32 logits, the size of Zen 5's L2
BLOCK_ROWS = 32


def check_token_ids(ids, vocab, what, where, ndim=None):
    """An integer array of ids in [0, vocab), as intp; a clear error otherwise (naming the first
    offending id and where it is)."""
    arr = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: {what} must be an integer array of token ids, got dtype {arr.dtype} "
                        f"with shape {arr.shape}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{where}: {what} must be {ndim}-d, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{where}: {what} is empty (shape {arr.shape})")
    bad = (arr < 0) | (arr >= vocab)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {what} must lie in [0, {vocab}) (the vocabulary size), got {arr[pos]} at "
                         f"index {pos} ({int(bad.sum())} id(s) out of range)")
    return arr.astype(np.intp, copy=False)


@register
class Embedding(Module):
    """Token ids (any shape) -> rows of a (num_embeddings, embedding_dim) table, N(0, 1)
    initialized as torch.nn.Embedding; the backward scatters dy into the table's gradient and
    returns None (ids have no gradient)."""

    def __init__(self, num_embeddings, embedding_dim, seed=0):
        super().__init__()
        check_ints("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        check_int("Embedding", "seed", seed, minimum=0)
        self.args = {"num_embeddings": num_embeddings, "embedding_dim": embedding_dim, "seed": seed}
        check_parameter_memory("Embedding", f"the table of {self.describe()}", 16 * num_embeddings * embedding_dim)
        rng = np.random.default_rng(seed)
        self.weight = Parameter(rng.standard_normal((num_embeddings, embedding_dim)).astype(np.float32))
        self._ids = None

    def forward(self, ids):
        ids = check_token_ids(ids, self.args["num_embeddings"], "ids", self.describe())
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, dy):
        ids = self._require_forward(self._ids)
        want = ids.shape + (self.args["embedding_dim"],)
        if getattr(dy, "shape", None) != want:
            raise ValueError(f"{self.describe()}: dy has shape {getattr(dy, 'shape', None)}, but the forward output "
                             f"has shape {want}")
        check_float32(self.describe(), "dy", dy)
        np.add.at(self.weight.grad, ids.reshape(-1), dy.reshape(-1, want[-1]))

    def state(self):
        return {"weight": self.weight.data.copy()}

    def load_state(self, state, prefix=""):
        self.weight.data[...] = _take(state, prefix + "weight", self.weight.data.shape, self.describe())

    def describe(self):
        return f"Embedding({self.args['num_embeddings']}, {self.args['embedding_dim']})"


@register
class LinearCrossEntropy(Module):
    """A Linear layer over a vocabulary fused with the mean softmax cross-entropy of its logits:
    loss(h, targets) with h (..., in_features) float32 and integer targets of h's leading shape;
    backward(dloss=1.0) returns dL/dh and accumulates the weight and bias gradients.  Parameters
    weight (classes, in_features) and bias (classes,), initialized as torch.nn.Linear."""

    PRECISIONS = ("fp32",)      # its blocked softmax reads fp32 logits; no bf16 path yet

    def __init__(self, in_features, num_classes, seed=0):
        super().__init__()
        check_ints("LinearCrossEntropy", in_features=in_features, num_classes=num_classes)
        check_int("LinearCrossEntropy", "seed", seed, minimum=0)
        self.args = {"in_features": in_features, "num_classes": num_classes, "seed": seed}
        check_parameter_memory("LinearCrossEntropy", f"the parameters of {self.describe()}",
                               16 * in_features * num_classes + 8 * num_classes)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (num_classes, in_features)).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, num_classes).astype(np.float32))
        self._saved = None

    def forward(self, x):
        raise TypeError(f"{self.describe()}: call loss(h, targets); the logits are never formed whole")

    def loss(self, h, targets):
        """Mean cross-entropy over all tokens; keeps, in training mode, what backward needs."""
        a = self.args
        if not isinstance(h, np.ndarray) or h.ndim < 2 or h.shape[-1] != a["in_features"]:
            raise ValueError(f"{self.describe()}: expected h of shape (..., {a['in_features']}), got "
                             f"{getattr(h, 'shape', None)}")
        check_float32(self.describe(), "h", h)
        targets = check_token_ids(targets, a["num_classes"], "targets", self.describe())
        if targets.shape != h.shape[:-1]:
            raise ValueError(f"{self.describe()}: targets have shape {targets.shape}, h has {h.shape}: one target "
                             "per row of h")
        h2 = np.ascontiguousarray(h.reshape(-1, a["in_features"]))
        t = targets.reshape(-1)
        m = h2.shape[0]
        # One GEMM for all logits (per-block GEMMs streamed the 16 MB packed W^T from memory once
        # per block: 0.4 GB a step at V = 8192), then the softmax block by block while each
        # block is in cache, its gradient written over its logits in place.
        z = matmul(h2, pack_matmul_operand(self.weight.data, transpose=True), bias=self.bias.data)
        total = 0.0
        for r0 in range(0, m, BLOCK_ROWS):
            r1 = min(m, r0 + BLOCK_ROWS)
            block = z[r0:r1]
            rows = np.arange(r1 - r0)
            zmax = block.max(axis=1, keepdims=True)
            target_logits = block[rows, t[r0:r1]]
            with np.errstate(over="ignore", invalid="ignore"):
                np.subtract(block, zmax, out=block)
                np.exp(block, out=block)
                s = block.sum(axis=1, keepdims=True, dtype=np.float64)
                total += float((np.log(s[:, 0]) + zmax[:, 0] - target_logits).sum())
                if self.training:    # dZ = (softmax - onehot) / tokens, over the block's exps
                    np.multiply(block, (1.0 / (s * m)).astype(np.float32), out=block)
                    block[rows, t[r0:r1]] -= np.float32(1.0 / m)
        dz = z if self.training else None
        self._saved = (h2, h.shape, dz) if self.training else None
        return total / m

    def backward(self, dloss=1.0):
        """dL/dh for L = dloss * loss; once per training-mode loss() (the saved gradient is
        consumed, as PyTorch frees its graph)."""
        if self._saved is None:
            raise RuntimeError(f"{self.name}.backward called before a training-mode loss (or twice after one)")
        if isinstance(dloss, (bool, np.bool_)) or not isinstance(dloss, (int, float, np.integer, np.floating)):
            raise TypeError(f"{self.describe()}: dloss must be a real number, got {dloss!r}")
        scale = float(dloss)
        if not np.isfinite(scale):
            raise ValueError(f"{self.describe()}: dloss must be finite, got {dloss!r}")
        h2, shape, dz = self._saved
        self._saved = None
        dw = matmul(dz, h2, transpose_x=True)
        if scale != 1.0:
            dw *= np.float32(scale)
        self.weight.grad += dw
        self.bias.grad += (dz.sum(axis=0, dtype=np.float64) * scale).astype(np.float32)
        dh = matmul(dz, self.weight.data)
        if scale != 1.0:
            dh *= np.float32(scale)
        return dh.reshape(shape)

    def state(self):
        return {"weight": self.weight.data.copy(), "bias": self.bias.data.copy()}

    def load_state(self, state, prefix=""):
        self.weight.data[...] = _take(state, prefix + "weight", self.weight.data.shape, self.describe())
        self.bias.data[...] = _take(state, prefix + "bias", self.bias.data.shape, self.describe())

    def describe(self):
        return f"LinearCrossEntropy({self.args['in_features']}->{self.args['num_classes']})"


@register
class GNMT(Module):
    """A GNMT-style LSTM language model over token ids (T, N): Embedding(vocab, hidden), a
    bidirectional LSTM layer of hidden/2 units per direction, layers-1 unidirectional LSTM
    layers of `hidden` units (residual connections from the third layer on, as GNMT), and a
    vocabulary projection fused with its cross-entropy (LinearCrossEntropy).

    forward(ids) -> the last layer's hidden states (T, N, hidden); loss(ids, targets) -> mean
    cross-entropy of the next-token targets; backward(dloss=1.0) after loss()."""

    def __init__(self, vocab=8192, hidden=512, layers=4, seed=0):
        super().__init__()
        check_ints("GNMT", vocab=vocab, hidden=hidden, layers=layers)
        check_int("GNMT", "seed", seed, minimum=0)
        if hidden % 2:
            raise ValueError(f"GNMT: hidden must be even (the first layer has hidden/2 units per direction), got {hidden}")
        if layers < 2:
            raise ValueError(f"GNMT: layers must be >= 2 (a bidirectional layer, then unidirectional ones), got {layers}")
        self.args = {"vocab": vocab, "hidden": hidden, "layers": layers, "seed": seed}
        self.embedding = Embedding(vocab, hidden, seed=seed)
        first = LSTM(hidden, hidden // 2, bidirectional=True, seed=seed + 1)
        self.encoder = [first] + [LSTM(hidden, hidden, seed=seed + 2 + i) for i in range(layers - 1)]
        self.classifier = LinearCrossEntropy(hidden, vocab, seed=seed + 100)
        self._loss_pending = False

    def children(self):
        return [self.embedding, *self.encoder, self.classifier]

    def named_state_children(self):
        names = ["embedding"] + [f"encoder.{i}" for i in range(len(self.encoder))] + ["classifier"]
        return list(zip(names, self.children()))

    def forward(self, ids):
        ids = check_token_ids(ids, self.args["vocab"], "ids", self.describe(), ndim=2)
        self._loss_pending = False    # the layers' caches now belong to this forward, not a loss
        h = self.embedding(ids)
        for i, layer in enumerate(self.encoder):
            y = layer(h)
            h = y + h if i >= 2 else y          # residual connections from the third layer on
        return h

    def loss(self, ids, targets):
        """Mean next-token cross-entropy; targets (T, N) ids, checked before any kernel runs."""
        ids = check_token_ids(ids, self.args["vocab"], "ids", self.describe(), ndim=2)
        targets = check_token_ids(targets, self.args["vocab"], "targets", self.describe(), ndim=2)
        if targets.shape != ids.shape:
            raise ValueError(f"{self.describe()}: targets have shape {targets.shape}, ids {ids.shape}")
        loss = self.classifier.loss(self.forward(ids), targets)
        self._loss_pending = self.training
        return loss

    def backward(self, dloss=1.0):
        """Gradients of dloss * the last training-mode loss(); once per loss (a forward() in
        between would leave the layers holding another batch, so it is refused)."""
        if not getattr(self, "_loss_pending", False):
            raise RuntimeError(f"{self.describe()}.backward needs a training-mode loss() right before it (a forward() "
                               "or a backward since then replaced or consumed what it saved)")
        self._loss_pending = False
        g = self.classifier.backward(dloss)
        for i in reversed(range(len(self.encoder))):
            gx = self.encoder[i].backward(g)
            g = gx + g if i >= 2 else gx
        self.embedding.backward(g)

    def describe(self):
        a = self.args
        return f"GNMT(vocab={a['vocab']}, hidden={a['hidden']}, layers={a['layers']})"


def gnmt(vocab=8192, hidden=512, layers=4, seed=0):
    """A GNMT-style LSTM model (see GNMT)."""
    return GNMT(vocab, hidden, layers, seed)
