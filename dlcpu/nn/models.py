"""Ready-made dlcpu.nn models: the ones `dlcpu train` trains.

Design: a model is a function returning a Sequential of registered layers, so it saves and loads
like any other model; its PyTorch twin (for benchmarks and tests) lives in dlcpu._peers, not here.
"""
from .layers import BasicBlock, BatchNorm2d, Conv2d, GlobalAvgPool, Linear, Sequential
from .recurrent import GRU, LSTM, LastTimeStep


def digits_resnet(width=16, classes=10, seed=0):
    """The small ResNet-style CNN `dlcpu train digits` trains on 1x8x8 images."""
    first = Conv2d(1, width, 3, 1, 1, bias=False, seed=seed)
    first.needs_input_grad = False  # nothing upstream of the first layer wants dx
    return Sequential(
        first, BatchNorm2d(width, relu=True),
        BasicBlock(width, width, 1, seed=seed + 10),
        BasicBlock(width, 2 * width, 2, seed=seed + 20),
        GlobalAvgPool(),
        Linear(2 * width, classes, seed=seed + 30),
    )


#: the cells digits_rnn builds
RNN_CELLS = {"lstm": LSTM, "gru": GRU}


def digits_rnn(hidden=64, classes=10, seed=0, cell="lstm", activation_impl="exact"):
    """`dlcpu train digits-rnn`: an LSTM (cell 'lstm') or GRU ('gru') reading the 8x8 digits row
    by row (T=8 steps of 8 pixels), classifying from its last hidden state.  activation_impl:
    how the cell evaluates sigmoid/tanh, 'exact', 'fast' or 'ktanh' (see nn.LSTM)."""
    if not isinstance(cell, str) or cell not in RNN_CELLS:
        raise ValueError(f"digits_rnn: cell must be 'lstm' or 'gru', got {cell!r}")
    rnn = RNN_CELLS[cell](8, hidden, seed=seed, activation_impl=activation_impl)
    rnn.needs_input_grad = False  # its input is the image rows
    return Sequential(rnn, LastTimeStep(), Linear(hidden, classes, seed=seed + 1))
