"""Built-in workloads (package data) and the benchdnn-style problem descriptors.

A conv layer is a `ConvLayer`: a name, a repeat count and a ConvShape (N = the descriptor's mb).  It comes from
the shipped ResNet-50 v1.5 table, or from a descriptor in oneDNN benchdnn's grammar, e.g.
    mb4ic64ih56oc64oh56kh3ph1        ic3ih224oc64kh7sh2ph3n"resnet_50:conv1"
Rules (as benchdnn): `_` separators are optional; missing w values copy the h values; a missing
stride is 1; padding is deduced from oh when oh is given and ph is not; `n` starts the name, and a
trailing `*3` in the name is a repeat count.  Groups, dilation and 3-D problems are refused.
"""
import csv
import re
from dataclasses import dataclass, replace
from importlib import resources

from .conv import ConvShape


@dataclass(frozen=True)
class ConvLayer:
    """A named convolution problem with its repeat count in the network.  The geometry is a
    ConvShape whose N is the descriptor's minibatch (0: use the run's --batch); its fields
    (C, K, H, W, R, S, stride_h, ..., P, Q) read through, as `layer.C`."""

    name: str
    count: int
    problem: ConvShape

    def __getattr__(self, attr):
        if attr.startswith("__") or attr == "problem":
            raise AttributeError(attr)
        return getattr(self.problem, attr)

    @property
    def mb(self):
        return self.problem.N

    def shape(self, mb):
        """The ConvShape of this layer at minibatch mb (the descriptor's own mb wins)."""
        return replace(self.problem, N=self.problem.N or mb)

    def without_batch(self):
        """The same layer run at the caller's minibatch."""
        return replace(self, problem=replace(self.problem, N=0))

    def descriptor(self, mb):
        """The benchdnn repro string for this layer at minibatch mb."""
        s = f"mb{mb}ic{self.C}ih{self.H}"
        if self.W != self.H:
            s += f"iw{self.W}"
        s += f"oc{self.K}oh{self.P}"
        if self.Q != self.P:
            s += f"ow{self.Q}"
        s += f"kh{self.R}"
        if self.S != self.R:
            s += f"kw{self.S}"
        if self.stride_h != 1 or self.stride_w != 1:
            s += f"sh{self.stride_h}" + (f"sw{self.stride_w}" if self.stride_w != self.stride_h else "")
        s += f"ph{self.pad_h}" + (f"pw{self.pad_w}" if self.pad_w != self.pad_h else "")
        return s + f'n"{self.name}"'


def _workload_text(filename):
    return resources.files("dlcpu").joinpath("workloads", filename).read_text()


def resnet50_layers():
    """The 23 distinct ResNet-50 v1.5 convolutions with their counts (53 convs in all)."""
    layers = []
    rows = csv.reader(line for line in _workload_text("resnet50_v1_5.csv").splitlines()
                      if line.strip() and not line.startswith("#"))
    for row in rows:
        name, count, c, k, h, w, r, s, stride, pad = row
        c, k, h, w, r, s, stride, pad = map(int, (c, k, h, w, r, s, stride, pad))
        layers.append(ConvLayer(name, int(count), ConvShape(0, c, k, h, w, r, s, stride, stride, pad, pad)))
    return layers


_KEYS = ("g", "mb", "ic", "id", "ih", "iw", "oc", "od", "oh", "ow", "kd", "kh", "kw",
         "sd", "sh", "sw", "pd", "ph", "pw", "dd", "dh", "dw")
_TOKEN = re.compile(r"(" + "|".join(sorted(_KEYS, key=len, reverse=True)) + r")(\d+)")


def parse_conv_descriptor(text):
    """Parse a benchdnn conv descriptor into a ConvLayer; ValueError names what is wrong."""
    src = text.strip()
    if not src:
        raise ValueError("conv descriptor is empty")
    body, name = src, ""
    m = re.search(r"n(\"[^\"]*\"|'[^']*'|[^\d\"'][^\"']*)$", src)
    if m and not _TOKEN.fullmatch(src[m.start():]):
        body, name = src[: m.start()], m.group(1).strip("\"'")
    count = 1
    rep = re.search(r"\*(\d+)$", name)
    if rep:
        count, name = int(rep.group(1)), name[: rep.start()]
    vals = {}
    pos = 0
    body = body.replace("_", "")
    while pos < len(body):
        t = _TOKEN.match(body, pos)
        if not t:
            raise ValueError(f"conv descriptor {text!r}: cannot parse at {body[pos:]!r} "
                             f"(expected fields like mb4ic64ih56oc64oh56kh3ph1)")
        if t.group(1) in vals:
            raise ValueError(f"conv descriptor {text!r}: field {t.group(1)!r} given twice")
        vals[t.group(1)] = int(t.group(2))
        pos = t.end()
    for key in ("ic", "ih", "oc", "kh"):
        if key not in vals:
            raise ValueError(f"conv descriptor {text!r}: missing required field {key!r} (need ic, ih, oc, kh)")
    if vals.get("g", 1) != 1:
        raise ValueError(f"conv descriptor {text!r}: groups (g={vals['g']}) are not supported")
    if any(k in vals for k in ("id", "od", "kd", "sd", "pd", "dd")):
        raise ValueError(f"conv descriptor {text!r}: 3-D convolutions are not supported")
    if vals.get("dh", 0) or vals.get("dw", 0):
        raise ValueError(f"conv descriptor {text!r}: dilation is not supported")
    ih, kh = vals["ih"], vals["kh"]
    iw, kw = vals.get("iw", ih), vals.get("kw", kh)
    sh = vals.get("sh", 1)
    sw = vals.get("sw", sh)
    if sh < 1 or sw < 1:
        raise ValueError(f"conv descriptor {text!r}: strides must be >= 1")

    def pad_for(out, inp, k, s, given):
        if given is not None:
            return given
        if out is None:
            return 0
        return max(0, ((out - 1) * s + k - inp) // 2)

    ph = pad_for(vals.get("oh"), ih, kh, sh, vals.get("ph"))
    pw = pad_for(vals.get("ow", vals.get("oh") if iw == ih and kw == kh and sw == sh else None),
                 iw, kw, sw, vals.get("pw", vals.get("ph")))
    layer = ConvLayer(name or "layer", count,
                      ConvShape(vals.get("mb", 0), vals["ic"], vals["oc"], ih, iw, kh, kw, sh, sw, ph, pw))
    if layer.P < 1 or layer.Q < 1:
        raise ValueError(f"conv descriptor {text!r}: output size would be <= 0")
    for key, want in (("oh", layer.P), ("ow", layer.Q)):
        if key in vals and vals[key] != want:
            raise ValueError(f"conv descriptor {text!r}: {key}={vals[key]} is inconsistent with the "
                             f"input, kernel, stride and padding (they give {want})")
    if min(layer.C, layer.K, layer.H, layer.W, layer.R, layer.S) < 1:
        raise ValueError(f"conv descriptor {text!r}: every size must be >= 1")
    return layer


@dataclass(frozen=True)
class LSTMLayer:
    name: str
    N: int
    C: int
    K: int
    T: int

    def forward_flops(self):
        """2*T*N*4K*(C+K): the input and recurrent GEMMs (the cell math is not counted)."""
        return 2 * self.T * self.N * 4 * self.K * (self.C + self.K)


def lstm_layers():
    """The LSTM grid shipped as package data (LIBXSMM lstmdriver sizes plus GNMT-like ones)."""
    rows = csv.reader(line for line in _workload_text("lstm.csv").splitlines()
                      if line.strip() and not line.startswith("#"))
    return [LSTMLayer(r[0], *map(int, r[1:5])) for r in rows]
