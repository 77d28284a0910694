"""PyTorch twins of dlcpu's models and layers: the peers that benchmarks and tests compare against.

Private, and the only place in the package that builds PyTorch models, so training code never
carries a peer library's models.  Every function takes the imported `torch` module (PyTorch is an
optional dependency: `torch_or_none()` says whether it is there) and builds the exact counterpart
of a dlcpu model: same layers, same order of parameters, so weights copy across one to one.
"""
from contextlib import contextmanager


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


def recurrent(torch, cell, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """A one-layer torch.nn.LSTM / GRU / RNN (cell 'lstm', 'gru', 'rnn') holding the given
    PyTorch-layout weights (numpy arrays): the twin of dlcpu.rnn's forward on those weights."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    assert w_ih.shape[0] == gates * hidden
    if cell == "rnn":
        m = torch.nn.RNN(inputs, hidden, nonlinearity=nonlinearity)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](inputs, hidden)
    with torch.no_grad():
        for p, v in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(torch.from_numpy(v))
    return m


def digits_train_step(torch, x_train, y_train, lr=0.05, seed=0):
    """step(idx): one SGD step of the digits_resnet twin on x_train[idx] (the peer side of
    `dlcpu bench train digits`; same optimizer settings as dlcpu.train)."""
    torch.manual_seed(seed)
    model = digits_resnet(torch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx):
        i = torch.from_numpy(idx)
        loss = loss_fn(model(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step
