"""Recurrent layers of dlcpu.nn: LSTM, GRU, RNN (tanh/relu) and LastTimeStep.

Design: one layer class, `_Recurrent`, parameterised by the cell, stacks layers and directions
over dlcpu.rnn's forward/backward.  Parameters have PyTorch's names (weight_ih_l{k}[_reverse],
...), but the two weight matrices are kept in the layout the kernels read
(dlcpu.rnn.pack_gate_weights: the packed operand of x @ W^T, each gate padded to 16 units), as
Conv2d keeps its blocked weights: a forward wraps them without a copy (inference packs nothing),
their gradients are written into that layout by the backward's GEMMs, and nn.SGD updates them in
place.  A training step's only re-packing is the backward's two transposed operands, one pass
each.  state() / state_dict() / save() give PyTorch's (gates*hidden, in) layout; biases are kept
in it.  Sequences are plain (T, N, C) float32 arrays (or (N, T, C) with batch_first).

activation_impl picks how the cells evaluate their sigmoid/tanh (dlcpu.rnn): "exact" (libm),
"fast" (LIBXSMM's rational approximations) or "ktanh" (K-TanH).  It is kept in the saved
configuration only when it is not "exact", so files written before it existed load unchanged.
"""
import numpy as np

from .. import rnn
from ..approx import check_impl
from .module import Module, Parameter, _take, check_bool, check_float32, check_ints, check_parameter_memory, register


def check_activation_impl(layer, value):
    """`value` is one of dlcpu.approx.IMPLS (ValueError naming them otherwise)."""
    return check_impl(value, layer, "activation_impl")


def _cell_ops(cell, nonlinearity, activation_impl="exact", precision="fp32"):
    """(forward, backward) of dlcpu.rnn for a cell, with uniform signatures:
    forward(x, weights, train) -> (y, cache); backward(dy, cache, need_dx, weight_grads) -> (dx or
    None, db_ih, db_hh), the weight gradients added to weight_grads.  The backward reads the
    activation implementation and the precision from the cache."""
    kw = {"activation_impl": activation_impl, "precision": precision}
    if cell == "lstm":
        def fwd(x, w, train):
            y, (_h, _c), *cache = rnn.lstm_forward(x, weights=w, train=train, **kw)
            return y, (cache[0] if cache else None)
        backward = rnn.lstm_backward
    elif cell == "gru":
        def fwd(x, w, train):
            y, _h, *cache = rnn.gru_forward(x, weights=w, train=train, **kw)
            return y, (cache[0] if cache else None)
        backward = rnn.gru_backward
    else:
        def fwd(x, w, train):
            y, _h, *cache = rnn.rnn_forward(x, weights=w, nonlinearity=nonlinearity, train=train, **kw)
            return y, (cache[0] if cache else None)
        backward = rnn.rnn_backward

    def bwd(dy, cache, need_dx, weight_grads):
        dx, _, _, db_ih, db_hh, *_ = backward(dy, cache, need_dx=need_dx, weight_grads=weight_grads)
        return dx, db_ih, db_hh
    return fwd, bwd


class _Recurrent(Module):
    """Multi-layer, optionally bidirectional recurrent layer with PyTorch's parameter layout
    (weight_ih_l{k}[_reverse], ...); input (T, N, C), or (N, T, C) with batch_first; output the
    last layer's hidden states, directions concatenated.  Initial states are zero.  Set
    needs_input_grad = False on a first layer (its input is data): backward then skips the
    first layer's dx GEMM and returns None, as PyTorch's autograd does for an input that does
    not require grad.

    activation_impl: 'exact', 'fast' or 'ktanh', how the gates' sigmoid/tanh are evaluated
    (dlcpu.rnn); it can also be changed later by assigning the attribute (fine-tuning a trained
    model under another implementation).  An RNN with nonlinearity='relu' has no sigmoid or
    tanh: it accepts the argument, which then changes nothing."""

    # set_precision: every product on operands in the format (int8: inference only, rnn.TRAINING_PRECISIONS)
    PRECISIONS = rnn.RECURRENT_PRECISIONS

    cell = None
    gates = None

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False,
                 seed=0, nonlinearity="tanh", activation_impl="exact"):
        super().__init__()
        check_ints(self.name, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        check_bool(self.name, "bidirectional", bidirectional)
        check_bool(self.name, "batch_first", batch_first)
        if nonlinearity not in ("tanh", "relu") or (self.cell != "rnn" and nonlinearity != "tanh"):
            allowed = "'tanh' or 'relu'" if self.cell == "rnn" else "'tanh' (only RNN takes 'relu')"
            raise ValueError(f"{self.name}: nonlinearity must be {allowed}, got {nonlinearity!r}")
        self.args = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers,
                         "bidirectional": bidirectional, "batch_first": batch_first, "seed": seed}
        if self.cell == "rnn":
            self.args["nonlinearity"] = nonlinearity
        self.nonlinearity = nonlinearity
        if nonlinearity == "relu":     # an unbounded h: no fixed scale for the integer formats (dlcpu.rnn)
            self.PRECISIONS = ("fp32", "bf16")
        self.activation_impl = activation_impl
        self.directions = 2 if bidirectional else 1
        # every layer and direction: gates*hidden x (inputs + hidden + 2 biases) parameters, each
        # a float64 draw, a float32 copy, and float32 data and gradient (padded to 16-blocks)
        pad = lambda v: -(-v // 16) * 16
        g = self.gates * pad(hidden_size)
        n = sum(self.directions * g * (pad(input_size if layer == 0 else hidden_size * self.directions)
                                       + pad(hidden_size) + 2) for layer in range(min(num_layers, 2)))
        n += max(0, num_layers - 2) * self.directions * g * (pad(hidden_size * self.directions) + pad(hidden_size) + 2)
        check_parameter_memory(self.name, f"the parameters of {self.describe()}", 20 * n)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(hidden_size)
        self.params = {}
        for layer in range(num_layers):
            cin = input_size if layer == 0 else hidden_size * self.directions
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                g = self.gates * hidden_size
                for name, shape in ((f"weight_ih{sfx}", (g, cin)), (f"weight_hh{sfx}", (g, hidden_size)),
                                    (f"bias_ih{sfx}", (g,)), (f"bias_hh{sfx}", (g,))):
                    value = rng.uniform(-bound, bound, shape).astype(np.float32)
                    if name.startswith("weight"):
                        value = rnn.pack_gate_weights(value, self.gates)
                    self.params[name] = Parameter(value)
        self._caches = None
        self._out_shape = None
        self.needs_input_grad = True

    @property
    def activation_impl(self):
        return self.args.get("activation_impl", "exact")

    @activation_impl.setter
    def activation_impl(self, value):
        check_activation_impl(self.name, value)
        if value == "exact":  # not saved: the configuration of files from before the option
            self.args.pop("activation_impl", None)
        else:
            self.args["activation_impl"] = value

    def own_parameters(self):
        return dict(self.params)

    def _inputs_of(self, name):
        """The input width of a parameter's layer (from its name, ..._l{k}[_reverse])."""
        layer = int(name.split("_l")[-1].split("_")[0])
        a = self.args
        return a["input_size"] if layer == 0 else a["hidden_size"] * self.directions

    def logical_shape(self, name):
        """A parameter's shape in PyTorch's layout."""
        g = self.gates * self.args["hidden_size"]
        if name.startswith("bias"):
            return (g,)
        return (g, self._inputs_of(name) if name.startswith("weight_ih") else self.args["hidden_size"])

    def to_torch_layout(self, name, value):
        """A parameter-shaped array (the data or the gradient of parameter `name`) in PyTorch's
        layout: weight matrices are unpacked from the kernels' layout, biases returned as they are."""
        if name.startswith("bias"):
            return value
        _, inputs = self.logical_shape(name)
        return rnn.unpack_gate_weights(value, self.gates, self.args["hidden_size"], inputs)

    def stored_offsets(self, name, rows, cols):
        """Flat offsets into parameter `name`'s storage of its logical elements [rows, cols]
        (weights; in PyTorch's layout), e.g. for fault injection and pruning masks."""
        _, inputs = self.logical_shape(name)
        return rnn.packed_gate_offsets(self.gates, self.args["hidden_size"], inputs, rows, cols)

    def forward(self, x):
        a = self.args
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != a["input_size"]:
            raise ValueError(f"{self.describe()}: expected a ({'N, T' if a['batch_first'] else 'T, N'}, "
                             f"{a['input_size']}) array, got shape {getattr(x, 'shape', None)}")
        check_float32(self.describe(), "x", x)
        if self.training and self.precision not in rnn.TRAINING_PRECISIONS:
            raise RuntimeError(f"{self.describe()}: precision {self.precision!r} runs inference only; call .eval() "
                               f"first, or train in {', '.join(rnn.TRAINING_PRECISIONS)}")
        seq = np.ascontiguousarray(x.transpose(1, 0, 2) if a["batch_first"] else x)
        fwd, _ = _cell_ops(self.cell, self.nonlinearity, self.activation_impl, self.precision)
        self._caches = []
        for layer in range(a["num_layers"]):
            outs, caches = [], []
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                p = [self.params[f"{n}{sfx}"].data for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                # the parameters are the kernels' operands: wrapped, not copied
                weights = rnn.weights_from_packed(self.cell, *p, self._inputs_of(sfx), a["hidden_size"])
                inp = seq[::-1] if d else seq
                y, cache = fwd(np.ascontiguousarray(inp), weights, self.training)
                outs.append(y[::-1] if d else y)
                caches.append(cache)
            seq = np.ascontiguousarray(np.concatenate(outs, axis=2)) if self.directions > 1 else outs[0]
            self._caches.append(caches)
        y = np.ascontiguousarray(seq.transpose(1, 0, 2)) if a["batch_first"] else seq
        self._out_shape = y.shape
        return y

    def backward(self, dy):
        a = self.args
        _, bwd = _cell_ops(self.cell, self.nonlinearity)
        self._require_forward(self._caches)
        if self._caches[0][0] is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward in training mode (this one ran in eval mode)")
        if not isinstance(dy, np.ndarray) or dy.shape != self._out_shape:
            raise ValueError(f"{self.describe()}: dy has shape {getattr(dy, 'shape', None)}, but the forward output "
                             f"has shape {self._out_shape}")
        check_float32(self.describe(), "dy", dy)
        g = np.ascontiguousarray(dy.transpose(1, 0, 2) if a["batch_first"] else dy)
        K = a["hidden_size"]
        for layer in reversed(range(a["num_layers"])):
            dx = None
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                part = np.ascontiguousarray(g[:, :, d * K:(d + 1) * K])
                if d:
                    part = np.ascontiguousarray(part[::-1])
                need_dx = layer > 0 or self.needs_input_grad
                weight_grads = (self.params[f"weight_ih{sfx}"].grad, self.params[f"weight_hh{sfx}"].grad)
                gx, db_ih, db_hh = bwd(part, self._caches[layer][d], need_dx, weight_grads)
                self.params[f"bias_ih{sfx}"].grad += db_ih
                self.params[f"bias_hh{sfx}"].grad += db_hh
                if need_dx:
                    gx = gx[::-1] if d else gx
                    dx = gx if dx is None else dx + gx
            if dx is None:
                return None
            g = np.ascontiguousarray(dx)
        return np.ascontiguousarray(g.transpose(1, 0, 2)) if a["batch_first"] else g

    def state(self):
        return {k: np.array(self.to_torch_layout(k, p.data)) for k, p in self.params.items()}

    def load_state(self, state, prefix=""):
        for k, p in self.params.items():
            value = _take(state, prefix + k, self.logical_shape(k), self.describe())
            p.data[...] = value if k.startswith("bias") else rnn.pack_gate_weights(value, self.gates)

    def describe(self):
        a = self.args
        return (f"{type(self).__name__}({a['input_size']}->{a['hidden_size']}, layers={a['num_layers']}"
                f"{', bidirectional' if a['bidirectional'] else ''}"
                f"{', activation_impl=' + a['activation_impl'] if 'activation_impl' in a else ''})")


@register
class LSTM(_Recurrent):
    cell, gates = "lstm", 4


@register
class GRU(_Recurrent):
    cell, gates = "gru", 3


@register
class RNN(_Recurrent):
    cell, gates = "rnn", 1


@register
class LastTimeStep(Module):
    """(T, N, F) -> (N, F): the last step of a sequence (N, T, F with batch_first)."""

    def __init__(self, batch_first=False):
        super().__init__()
        check_bool("LastTimeStep", "batch_first", batch_first)
        self.args = {"batch_first": batch_first}
        self._shape = None

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"LastTimeStep: expected a 3-d sequence array, got shape {getattr(x, 'shape', None)}")
        check_float32("LastTimeStep", "x", x)
        self._shape = x.shape
        return np.ascontiguousarray(x[:, -1] if self.args["batch_first"] else x[-1])

    def backward(self, dy):
        shape = self._require_forward(self._shape)
        want = (shape[0], shape[2]) if self.args["batch_first"] else shape[1:]
        if getattr(dy, "shape", None) != want:
            raise ValueError(f"LastTimeStep: dy has shape {getattr(dy, 'shape', None)}, but the forward output has shape {want}")
        check_float32("LastTimeStep", "dy", dy)
        g = np.zeros(shape, np.float32)
        if self.args["batch_first"]:
            g[:, -1] = dy
        else:
            g[-1] = dy
        return g

