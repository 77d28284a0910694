"""PyTorch twins of dlcpu's models and layers: the peers that benchmarks and tests compare against.

Private, and the only place in the package that builds PyTorch models, so training code never
carries a peer library's models.  Every function takes the imported `torch` module (PyTorch is an
optional dependency: `torch_or_none()` says whether it is there) and builds the exact counterpart
of a dlcpu model: same layers, same order of parameters, so weights copy across one to one.
"""
from contextlib import contextmanager

import numpy as np


def torch_or_none():
    """The torch module, or None where PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def require_torch(what):
    """The torch module, or ValueError telling the user how to install it."""
    torch = torch_or_none()
    if torch is None:
        raise ValueError(f"{what} needs PyTorch: pip install 'dlcpu[compare]'")
    return torch


@contextmanager
def torch_threads(torch, n):
    """torch.set_num_threads(n) for the duration of the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def basic_block(torch, cin, cout, stride):
    """Twin of nn.BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus the (1x1 conv + BN) shortcut, ReLU."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.short = tnn.Sequential()
            if stride != 1 or cin != cout:
                self.short = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + self.short(x))

    return Block()


def digits_resnet(torch, width=16, classes=10):
    """Twin of nn.digits_resnet."""
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(1, width, 3, 1, 1, bias=False), tnn.BatchNorm2d(width), tnn.ReLU(),
        basic_block(torch, width, width, 1), basic_block(torch, width, 2 * width, 2),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(2 * width, classes),
    )


def digits_rnn(torch, hidden=64, classes=10):
    """Twin of nn.digits_rnn (LSTM cell): an LSTM over the T=8 image rows, a Linear on the last
    hidden state; input (T, N, 8)."""
    tnn = torch.nn

    class DigitsRNN(tnn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = tnn.LSTM(8, hidden)
            self.fc = tnn.Linear(hidden, classes)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y[-1])

    return DigitsRNN()


def recurrent(torch, cell, weights, *, num_layers=1, bidirectional=False, batch_first=False, nonlinearity="tanh"):
    """torch.nn.LSTM / GRU / RNN (cell 'lstm', 'gru', 'rnn') holding `weights`, a dict of numpy
    arrays under PyTorch's names (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ...,
    `_reverse` for the second direction): the twin of dlcpu.rnn on those weights and of
    nn.LSTM / GRU / RNN (whose own_parameters() use the same names)."""
    w_ih = weights["weight_ih_l0"]
    hidden = weights["weight_hh_l0"].shape[1]
    kwargs = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    if cell == "rnn":
        kwargs["nonlinearity"] = nonlinearity
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](w_ih.shape[1], hidden, **kwargs)
    params = dict(m.named_parameters())
    if set(params) != set(weights):
        raise ValueError(f"recurrent twin: weights {sorted(weights)} do not match torch's {sorted(params)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(weights[name]))
    return m


def digits_train_step(torch, x_train, y_train, lr=0.05, seed=0, autocast=False):
    """step(idx): one SGD step of the digits_resnet twin on x_train[idx] (the peer side of
    `dlcpu bench train digits`; same optimizer settings as dlcpu.train); autocast: forward and
    loss under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's mixed precision."""
    torch.manual_seed(seed)
    model = digits_resnet(torch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx):
        i = torch.from_numpy(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


#: dlcpu digits_resnet state names -> the twin's (the prefix of each layer; ReLU, pooling and
#: Flatten have no state)
_DIGITS_NAMES = {"0.": "0.", "1.": "1.", "2.0.": "3.conv1.", "2.1.": "3.bn1.", "2.2.": "3.conv2.", "2.3.": "3.bn2.",
                 "3.0.": "4.conv1.", "3.1.": "4.bn1.", "3.2.": "4.conv2.", "3.3.": "4.bn2.", "3.5.": "4.short.0.",
                 "3.6.": "4.short.1.", "5.": "7."}


def digits_resnet_from(torch, model):
    """The digits_resnet twin holding a trained dlcpu nn.digits_resnet's weights and running
    statistics, in eval mode (the peer of `dlcpu bench faults`)."""
    state = model.state()
    width = state["0.weight"].shape[0]
    twin = digits_resnet(torch, width, state["5.weight"].shape[0])
    tensors = {}
    for name, value in state.items():
        prefix = max((p for p in _DIGITS_NAMES if name.startswith(p)), key=len)
        tensors[_DIGITS_NAMES[prefix] + name[len(prefix):]] = torch.from_numpy(value.copy())
    missing = set(twin.state_dict()) - set(tensors) - {k for k in twin.state_dict() if k.endswith("num_batches_tracked")}
    if missing:
        raise ValueError(f"digits twin: the dlcpu model has no values for {sorted(missing)}")
    twin.load_state_dict(tensors, strict=False)
    return twin.eval()


def pytorchfi_or_none():
    """(pytorchfi.core module, version) or None where PyTorchFI is not installed."""
    try:
        from importlib.metadata import version

        from pytorchfi import core
    except ImportError:
        return None
    return core, version("pytorchfi")


def pytorchfi_bitflip_campaign(torch, core, twin, images, faults, batch=1):
    """Run single-bit activation faults with PyTorchFI on `twin`: faults is a list of
    (conv layer number, sample, c, h, w, bit); images the (N, 1, 8, 8) float32 inputs.  batch=1:
    one image per injection (how PyTorchFI's examples run campaigns); batch=B: B faults per
    declared injection, one per batch element (its batched mode).  PyTorchFI 0.6.0's own
    random_neuron_single_bit_inj calls a method it lacks, and its bit flip is the fixed-point
    model, so the IEEE flip is our function passed to declare_neuron_fi(function=...), the
    documented way to inject a custom error.  Returns the faulty logits (len(faults), classes)."""
    fi = core.fault_injection(twin, batch, input_shape=list(images.shape[1:]), layer_types=[torch.nn.Conv2d])
    x_all = torch.from_numpy(images)
    out = []
    for start in range(0, len(faults), batch):
        group = faults[start:start + batch]
        # per conv layer, the batch rows and the element and XOR mask of its faults, as index tensors
        # built before the forward, so the hook does one indexed XOR (no Python loop over faults)
        by_layer = {}
        for b, (lay, _s, c, h, w, bit) in enumerate(group):
            by_layer.setdefault(lay, []).append((b, c, h, w, -2**31 if bit == 31 else 1 << bit))
        by_layer = {lay: [torch.tensor(col) for col in zip(*rows)] for lay, rows in by_layer.items()}
        fi.reset_current_layer()

        def flip(module, inputs, output, by_layer=by_layer):
            sel = by_layer.get(fi.get_current_layer())
            if sel is not None:
                b, c, h, w, mask = sel
                words = output.view(torch.int32)        # conv outputs are contiguous NCHW
                words[b, c, h, w] ^= mask.to(torch.int32)
            fi.updateLayer()
            if fi.get_current_layer() >= fi.get_total_layers():
                fi.reset_current_layer()

        corrupted = fi.declare_neuron_fi(batch=list(range(len(group))), layer_num=[g[0] for g in group],
                                         dim1=[g[2] for g in group], dim2=[g[3] for g in group],
                                         dim3=[g[4] for g in group], function=flip)
        x = x_all[[g[1] for g in group]]
        with torch.no_grad():
            out.append(corrupted(x).numpy())
    return np.concatenate(out)


def resnet(torch, block="bottleneck", layers=(3, 4, 6, 3), num_classes=1000, in_channels=3):
    """A PyTorch ResNet with torchvision's architecture and module names (torchvision.models.resnet
    v1.5: the stride on the bottleneck's 3x3), so its state_dict() has exactly torchvision's keys:
    the twin of nn.ResNet / nn.resnet50 / nn.resnet18.  Written here because torchvision's CPU
    build is not on this project's package index; the structure is the published one."""
    tnn = torch.nn
    relu = tnn.functional.relu

    class Basic(tnn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes))

        def forward(self, x):
            # functional ReLUs: the same arithmetic as torchvision's one ReLU module called
            # twice, which PT2E's X86InductorQuantizer refuses ("Input partition has more than
            # one output node": it groups the calls of one module into one partition)
            out = relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(tnn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride):
            super().__init__()
            out = planes * 4
            self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = tnn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(out)
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False), tnn.BatchNorm2d(out))

        def forward(self, x):
            h = relu(self.bn1(self.conv1(x)))          # (functional: as Basic's)
            h = relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            return relu(h + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            cls = Bottleneck if block == "bottleneck" else Basic
            self.conv1 = tnn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
                blocks = []
                for j in range(count):
                    blocks.append(cls(cin, planes, 2 if (i > 0 and j == 0) else 1))
                    cin = planes * cls.expansion
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def resnet_from(torch, model, memory_format=None):
    """The twin of a dlcpu nn.ResNet holding its weights and running statistics (through
    state_dict, PyTorch's names and layouts), in the model's train/eval mode; memory_format
    torch.channels_last puts it on oneDNN's fast path."""
    a = model.args
    twin = resnet(torch, a["block"], a["layers"], a["num_classes"], a["in_channels"])
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()})
    twin.train(model.training)
    if memory_format is not None:
        twin = twin.to(memory_format=memory_format)
    return twin


def quantized_model(torch, twin, example, reduce_range):
    """PyTorch's post-training static int8 form of an eval-mode twin, calibrated on `example`, by
    the fastest path this installation has, and its description:
      - PT2E (torchao's X86InductorQuantizer) compiled by inductor with freezing, PyTorch's
        recipe for int8 inference on x86 since FX graph mode was deprecated; needs torchao
        (`pip install 'dlcpu[compare]'`).  On the AVX2-only test machine it ran ResNet-50 at
        batch 4 in 148 ms against FX's 182 ms (2 threads, same run, 2026-12-03);
      - else FX graph mode on the x86 engine (_fx_quantized_model).
    Both fold the batch norms, fuse the ReLUs and pass u8 activations from layer to layer, the
    residual adds included, with symmetric per-output-channel weights as dlcpu's and 7-bit
    codes with reduce_range (dlcpu's act_bits=7); their activation observers are each path's
    default (PT2E: a histogram; FX here: min/max, as dlcpu's max |x|)."""
    if pt2e_or_none() is not None:
        return _pt2e_quantized_model(torch, twin, example, reduce_range), \
            "PT2E int8 (X86InductorQuantizer, torch.compile with freezing)"
    return _fx_quantized_model(torch, twin, example, reduce_range), "FX-quantized int8 (x86 engine)"


def pt2e_or_none():
    """torchao's PT2E quantization module, or None where torchao is not installed."""
    try:
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError:
        return None
    return quantize_pt2e


def _pt2e_quantized_model(torch, twin, example, reduce_range):
    """The twin exported (torch.export), annotated by X86InductorQuantizer's default config,
    calibrated on `example`, converted and compiled by inductor with freezing (weights
    prepacked once, as the recipe says: without it, the compiled model took 347 ms where FX took
    145); compiled for example's shape by one call here, outside any timer."""
    import warnings

    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(twin.eval(), (example,)).module(), quantizer)
        prepared(example)
        compiled = torch.compile(convert_pt2e(prepared))

    def run(x):
        # freezing is read when inductor compiles, at the first call and at any recompile
        # (another grad mode, another shape): set for every call, not only the first
        with inductor_config.patch(freezing=True):
            return compiled(x)
    with torch.inference_mode():
        run(example)
    return run


def _fx_quantized_model(torch, twin, example, reduce_range):
    """FX graph mode post-training quantization on the x86 engine: per-tensor activation scales
    from the range seen (MinMaxObserver, affine: its zero point follows the minimum where
    dlcpu's codes start at 0 after a ReLU or sit at the middle) and symmetric per-output-channel
    weights.  Sets the process's quantized engine to x86 (what it runs on)."""
    import warnings

    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range),
                      weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                qscheme=torch.per_channel_symmetric))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # FX quantization's deprecation notice
        prepared = prepare_fx(twin.eval(), QConfigMapping().set_global(qconfig), example_inputs=(example,))
        with torch.inference_mode():
            prepared(example)
        return convert_fx(prepared)


def gnmt(torch, vocab, hidden, layers):
    """The PyTorch twin of nn.GNMT: torch.nn.Embedding, a bidirectional torch.nn.LSTM of hidden/2
    units per direction, unidirectional ones (residuals from the third layer on) and a Linear
    over the vocabulary; loss(ids, targets) is the mean cross-entropy, as nn.GNMT.loss."""
    tnn = torch.nn

    class GNMT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = tnn.Embedding(vocab, hidden)
            self.encoder = tnn.ModuleList([tnn.LSTM(hidden, hidden // 2, bidirectional=True)] +
                                          [tnn.LSTM(hidden, hidden) for _ in range(layers - 1)])
            self.classifier = tnn.Linear(hidden, vocab)

        def forward(self, ids):
            h = self.embedding(ids)
            for i, layer in enumerate(self.encoder):
                y, _ = layer(h)
                h = y + h if i >= 2 else y
            return h

        def loss(self, ids, targets):
            logits = self.classifier(self.forward(ids))
            return tnn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    return GNMT()


def gnmt_from(torch, model):
    """The twin of a dlcpu nn.GNMT holding its weights (through state_dict)."""
    a = model.args
    twin = gnmt(torch, a["vocab"], a["hidden"], a["layers"])
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()})
    twin.train(model.training)
    return twin
