"""The networks of the suite: LEAF's reference models and the QuAFL paper code's models.

* LEAF reference models (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018,
  ``models/<dataset>/*.py``; docs/data.md#models): ``femnist_cnn``, ``shakespeare_lstm``, ``celeba_cnn``, ``logreg``.
* QuAFL paper-code models (Zakerinia et al., AISTATS 2024, ``model_manager.py`` and Distiller's
  ``resnet_cifar10.py``; docs/data.md#models): ``mlp`` (MNIST), ``fmnist_cnn``, ``resnet20`` (CIFAR-10).

Determinism: :func:`build_model` constructs the module on the ``meta`` device (so construction draws
nothing from torch's global RNG) and then initialises every tensor from the caller's generator only.
Every model works with ``torch.func.functional_call`` on views of one flat vector (``params.py``);
dropout draws its mask from a generator set with :func:`set_dropout_generator` (see :class:`GenDropout`).
All models return logits and accept the inputs as the loaders store them (integer pixel/character
tensors are cast inside ``forward``).  Add a model with :func:`register_model`.

The module is longer than most (~410 lines): the seven reference networks, their shape checks and the one
initialisation rule they share are kept in one table.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qafl_core.data.registry import DATASETS

# ------------------------------------------------------------------ initialisation
def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter and buffer of ``module`` from ``generator`` only.

    The distributions are PyTorch's defaults: Linear/Conv weights kaiming-uniform (a = sqrt(5)),
    their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); LSTM tensors U(-1/sqrt(hidden), 1/sqrt(hidden));
    Embedding N(0, 1) (padding row zero); BatchNorm weight 1, bias 0, running mean 0, variance 1.

    Raises:
        ValueError: a submodule owns parameters of a type this function does not know (it would
            otherwise keep a non-reproducible initialisation).
    """
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()  # in_features, or in_channels/groups * kernel area
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.RNNBase):
            bound = 1.0 / math.sqrt(m.hidden_size)
            for p in m.parameters(recurse=False):  # registration order, as nn.LSTM does it
                nn.init.uniform_(p, -bound, bound, generator=generator)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 1.0, generator=generator)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if m.track_running_stats:
                m.reset_running_stats()
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            raise ValueError(f"reset_parameters: module '{name}' ({type(m).__name__}) has parameters or buffers "
                             "but no known initialisation; add a rule for it")


# ------------------------------------------------------------------ dropout with an explicit generator
class GenDropout(nn.Module):
    """Element-wise dropout whose mask comes from an explicit ``torch.Generator``.

    ``nn.Dropout`` draws from torch's global RNG, which the suite never uses (rng.py).  The engine sets
    the generator before local training, e.g. the client's mini-batch stream, with
    :func:`set_dropout_generator` (or by assigning ``module.generator``).  In eval mode it is the identity.
    The paper code uses ``nn.Dropout2d(0.25)`` on a 2-D ``(N, 600)`` tensor, which PyTorch treats as
    element-wise dropout, so this is the same operation.

    Args:
        p: probability of zeroing an element; kept elements are scaled by ``1 / (1 - p)``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"GenDropout: p must be in [0, 1], got {p}")
        self.p = p
        self.generator: torch.Generator | None = None
        #: a mask drawn in advance (batched local SGD, qafl_core.batched_func), used instead of a draw
        self.given_keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = self.given_keep
        if keep is None:
            if self.generator is None:
                raise RuntimeError("GenDropout in training mode needs a generator: call "
                                   "qafl_core.models.set_dropout_generator(model, generator) first")
            keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p) if self.p < 1.0 else torch.zeros_like(x)


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> int:
    """Point every :class:`GenDropout` of ``model`` at ``generator``; returns how many there are."""
    found = [m for m in model.modules() if isinstance(m, GenDropout)]
    for m in found:
        m.generator = generator
    return len(found)


# ------------------------------------------------------------------ helpers
def _shape_error(model: str, expected: str, got: tuple[int, ...]) -> ValueError:
    return ValueError(f"model '{model}': input_shape must be {expected} (per sample, no batch dim), got {got}")


def _image_28(model: str, input_shape: tuple[int, ...]) -> None:
    if input_shape not in ((1, 28, 28), (28, 28), (784,)):
        raise _shape_error(model, "(1, 28, 28), (28, 28) or (784,)", input_shape)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


# ------------------------------------------------------------------ LEAF models
class FemnistCNN(nn.Module):
    """LEAF ``femnist.cnn`` on 28x28 greyscale images (LEAF feeds raw [0, 1] pixels, no normalisation)."""

    def __init__(self, num_classes: int = 62):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)  # TF 'same' for an odd kernel
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 2048)
        self.fc2 = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_float(x).reshape(x.shape[0], 1, 28, 28)  # accepts (N, 784) too
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class ShakespeareLSTM(nn.Module):
    """LEAF ``shakespeare.stacked_lstm``: next-character prediction from ``(N, seq_len)`` indices.

    LEAF's TF ``BasicLSTMCell`` has one bias per gate and adds a constant ``forget_bias`` of 1.0 to the
    forget gate; PyTorch's LSTM has two bias vectors (2 x 4 x 256 parameters instead of 4 x 256 per
    layer) and no constant.  ``forget_bias`` (default 0, PyTorch's behaviour) is added to the initial
    forget-gate part of ``bias_ih`` to approximate LEAF when wanted.
    """

    def __init__(self, num_classes: int = 80, embed_dim: int = 8, hidden: int = 256, num_layers: int = 2,
                 forget_bias: float = 0.0):
        super().__init__()
        self.forget_bias = forget_bias
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def init_parameters(self, generator: torch.Generator) -> None:
        reset_parameters(self, generator)
        if self.forget_bias:
            h = self.lstm.hidden_size
            with torch.no_grad():
                for layer in range(self.lstm.num_layers):  # gate order i, f, g, o
                    getattr(self.lstm, f"bias_ih_l{layer}")[h:2 * h] += self.forget_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x.long()))  # (N, L, hidden)
        return self.fc(out[:, -1, :])


class CelebaCNN(nn.Module):
    """LEAF ``celeba.cnn`` on ``(N, 3, 84, 84)`` raw 0-255 RGB values (LEAF does not scale them).

    Max pooling uses TF 'same' padding, i.e. ``ceil_mode=True`` (84 -> 42 -> 21 -> 11 -> 6), so the
    dense layer sees 6*6*32 = 1152 features.  Batch norm: LEAF calls
    ``tf.layers.batch_normalization(training=True)`` also at test time, so with ``bn_always_train=True``
    (default) it always normalises with the current batch's statistics and keeps no running statistics
    (no buffers).  ``bn_always_train=False`` gives ordinary BN with running statistics for evaluation.
    TF's BN epsilon (1e-3) is used.
    """

    def __init__(self, num_classes: int = 2, image_hw: tuple[int, int] = (84, 84), bn_always_train: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        h, w = image_hw
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 32, 32, 3, padding=1),
                       nn.BatchNorm2d(32, eps=1e-3, track_running_stats=not bn_always_train),
                       nn.MaxPool2d(2, 2, ceil_mode=True), nn.ReLU()]
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.features = nn.Sequential(*layers)
        self.pooled_hw = (h, w)
        self.fc = nn.Linear(32 * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(_as_float(x)).flatten(1))


class LogReg(nn.Module):
    """Multinomial logistic regression (LEAF ``synthetic.log_reg``).

    LEAF applies a sigmoid to the logits and then a softmax cross-entropy on top of them.  That squashes
    every logit into (0, 1), so the softmax can never become confident (probabilities stay within a factor
    e of each other) and gradients are damped: a LEAF quirk, not logistic regression.  ``leaf_sigmoid=True``
    reproduces it; the default ``False`` returns the plain affine logits.
    """

    def __init__(self, in_features: int, num_classes: int, leaf_sigmoid: bool = False):
        super().__init__()
        self.leaf_sigmoid = leaf_sigmoid
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(_as_float(x).flatten(1))
        return torch.sigmoid(out) if self.leaf_sigmoid else out


# ------------------------------------------------------------------ QuAFL paper-code models
class MLP(nn.Module):
    """The paper code's ``MnistNet``: flatten, dense 32, ReLU, dense ``num_classes``."""

    def __init__(self, in_features: int = 784, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(_as_float(x).flatten(1))))


class FmnistCNN(nn.Module):
    """The paper code's ``FashionMnistNet`` (trained with Adam there).

    28 -conv pad 1-> 28 -pool-> 14 -conv no pad-> 12 -pool-> 6, so the first FC layer has 64*6*6 = 2304
    inputs.  The three FC layers have no activation between them (as in the paper code); the dropout is a
    :class:`GenDropout` (set its generator before training).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(64 * 6 * 6, 600)
        self.drop = GenDropout(0.25)
        self.fc2 = nn.Linear(600, 120)
        self.fc3 = nn.Linear(120, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_float(x).reshape(x.shape[0], 1, 28, 28)
        x = self.layer2(self.layer1(x)).flatten(1)  # (N, 2304)
        return self.fc3(self.fc2(self.drop(self.fc1(x))))


class BasicBlock(nn.Module):
    """Distiller's CIFAR BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the (optionally projected) input, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:  # Distiller: 1x1 conv + BN projection ("option B")
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class ResNet20(nn.Module):
    """Distiller ``resnet20_cifar`` (the paper's CIFAR-10 model) on ``(N, 3, 32, 32)`` normalised images."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, n, stride in zip((16, 32, 64), blocks, (1, 2, 2)):
            stages.append(nn.Sequential(*[BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                          for i in range(n)]))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)

    def init_parameters(self, generator: torch.Generator) -> None:
        """Distiller's init: conv weights N(0, 2 / (k*k*out_channels)), BN 1/0, Linear PyTorch default."""
        reset_parameters(self, generator)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(_as_float(x))))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # = AvgPool2d(8) on 32x32 inputs


# ------------------------------------------------------------------ registry
def _femnist_cnn(input_shape, num_classes):
    _image_28("femnist_cnn", input_shape)
    return FemnistCNN(num_classes)


def _shakespeare_lstm(input_shape, num_classes, forget_bias: float = 0.0):
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise _shape_error("shakespeare_lstm", "(seq_len,) e.g. (80,)", input_shape)
    return ShakespeareLSTM(num_classes, forget_bias=forget_bias)


def _celeba_cnn(input_shape, num_classes, bn_always_train: bool = True):
    if len(input_shape) != 3 or input_shape[0] != 3 or min(input_shape[1:]) < 1:
        raise _shape_error("celeba_cnn", "(3, H, W), LEAF: (3, 84, 84)", input_shape)
    return CelebaCNN(num_classes, tuple(input_shape[1:]), bn_always_train=bn_always_train)


def _flat_features(model: str, input_shape) -> int:
    if len(input_shape) == 0 or min(input_shape) < 1:
        raise _shape_error(model, "non-empty with positive sizes, e.g. (60,) or (784,)", input_shape)
    return math.prod(input_shape)


def _logreg(input_shape, num_classes, leaf_sigmoid: bool = False):
    return LogReg(_flat_features("logreg", input_shape), num_classes, leaf_sigmoid=leaf_sigmoid)


def _mlp(input_shape, num_classes, hidden: int = 32):
    return MLP(_flat_features("mlp", input_shape), hidden, num_classes)


def _fmnist_cnn(input_shape, num_classes):
    _image_28("fmnist_cnn", input_shape)
    return FmnistCNN(num_classes)


def _resnet20(input_shape, num_classes):
    if input_shape != (3, 32, 32):
        raise _shape_error("resnet20", "(3, 32, 32)", input_shape)
    return ResNet20(num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "femnist_cnn": _femnist_cnn,
    "shakespeare_lstm": _shakespeare_lstm,
    "celeba_cnn": _celeba_cnn,
    "logreg": _logreg,
    "mlp": _mlp,
    "fmnist_cnn": _fmnist_cnn,
    "resnet20": _resnet20,
}
"""Model name -> builder ``(input_shape, num_classes, **options) -> nn.Module`` (uninitialised tensors)."""



def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``name`` available to the ``model`` config key (and to :func:`register_dataset`'s ``default_model``).

    ``builder(input_shape, num_classes, **options) -> nn.Module``; :func:`build_model` constructs it on the
    ``meta`` device and initialises every tensor from the run's generator (the module's ``init_parameters``
    if it has one, else :func:`reset_parameters`), so the builder itself draws no random numbers.
    """
    MODELS[name] = builder


def default_model(dataset_name: str) -> str:
    """The reference model name for a dataset (LEAF's for LEAF data, the paper code's otherwise), from the
    dataset table (:mod:`qafl_core.data.registry`)."""
    model = DATASETS.get(dataset_name, {}).get("model")
    if model is None:
        known = sorted(n for n, e in DATASETS.items() if e.get("model"))
        raise ValueError(f"no default model for dataset '{dataset_name}'; known datasets: {known}")
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, generator: torch.Generator,
                **options) -> nn.Module:
    """Build model ``name`` with every tensor initialised from ``generator`` alone.

    The module is constructed on the ``meta`` device, so PyTorch's own initialisers run on no data and
    the global RNG is neither used nor advanced; then each tensor is filled from ``generator``
    (the model's ``init_parameters`` if it defines one, else :func:`reset_parameters`).

    Args:
        name: a key of :data:`MODELS`.
        input_shape: shape of one sample as the loader stores it (``x_train.shape[1:]``).
        num_classes: number of outputs (for ``shakespeare_lstm`` also the vocabulary size).
        generator: CPU generator, e.g. ``rng.torch_generator(seed, "model_init")``.
        **options: model options: ``bn_always_train`` (celeba_cnn), ``leaf_sigmoid`` (logreg),
            ``forget_bias`` (shakespeare_lstm), ``hidden`` (mlp).

    Returns:
        The model on the CPU in training mode.

    Raises:
        ValueError: unknown name or option, ``num_classes < 2``, or an incompatible ``input_shape``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; known models: {sorted(MODELS)}")
    if int(num_classes) < 2:
        raise ValueError(f"model '{name}': num_classes must be >= 2, got {num_classes}")
    input_shape = tuple(int(s) for s in input_shape)
    with torch.device("meta"):
        try:
            model = MODELS[name](input_shape, int(num_classes), **options)
        except TypeError as err:  # an option the builder does not take
            raise ValueError(f"model '{name}': bad options {sorted(options)}: {err}") from None
    model = model.to_empty(device="cpu")
    init = getattr(model, "init_parameters", None)
    if init is not None:
        init(generator)
    else:
        reset_parameters(model, generator)
    return model.train()
