"""Tests for qafl_core.models: shapes, parameter counts, deterministic init, functional_call, dropout."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from qafl_core.models import (MODELS, GenDropout, build_model, default_model, reset_parameters,
                              set_dropout_generator)

# name -> (per-sample input shape as the loaders store it, num_classes, input dtype)
SPECS = {
    "femnist_cnn": ((1, 28, 28), 62, torch.float32),
    "shakespeare_lstm": ((80,), 80, torch.uint8),
    "celeba_cnn": ((3, 84, 84), 2, torch.uint8),
    "logreg": ((60,), 5, torch.float32),
    "mlp": ((1, 28, 28), 10, torch.float32),
    "fmnist_cnn": ((1, 28, 28), 10, torch.float32),
    "resnet20": ((3, 32, 32), 10, torch.float32),
}


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def make_input(name, batch=3, seed=0):
    shape, num_classes, dtype = SPECS[name]
    g = gen(seed)
    if dtype == torch.uint8:
        high = num_classes if name == "shakespeare_lstm" else 256
        return torch.randint(0, high, (batch, *shape), generator=g, dtype=torch.int64).to(torch.uint8)
    return torch.rand((batch, *shape), generator=g)


def build(name, seed=0, **options):
    shape, num_classes, _ = SPECS[name]
    model = build_model(name, shape, num_classes, gen(seed), **options)
    set_dropout_generator(model, gen(99))
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_and_default_models():
    assert set(MODELS) == set(SPECS)
    expected = {"femnist": "femnist_cnn", "shakespeare": "shakespeare_lstm", "celeba": "celeba_cnn",
                "synthetic": "logreg", "mnist": "mlp", "fmnist": "fmnist_cnn", "cifar10": "resnet20"}
    for dataset, model in expected.items():
        assert default_model(dataset) == model
    with pytest.raises(ValueError, match="femnist"):
        default_model("imagenet")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_output_shape_and_finite(name):
    model = build(name)
    out = model(make_input(name))
    assert out.shape == (3, SPECS[name][1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_alternative_input_layouts():
    for name in ("femnist_cnn", "fmnist_cnn", "mlp"):
        model = build(name).eval()
        x = make_input(name)
        assert torch.allclose(model(x), model(x.reshape(3, 784)))
        assert build_model(name, (784,), SPECS[name][1], gen(0)).eval()(x.reshape(3, 784)).shape == (3, SPECS[name][1])
    lstm = build("shakespeare_lstm")
    x = make_input("shakespeare_lstm")
    assert torch.equal(lstm(x), lstm(x.long()))
    celeba = build("celeba_cnn")
    x = make_input("celeba_cnn")
    assert torch.equal(celeba(x), celeba(x.float()))  # raw 0-255 values, no scaling


def test_parameter_counts():
    femnist = (1 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (3136 * 2048 + 2048) + (2048 * 62 + 62)
    assert femnist == 6_603_710
    assert n_params(build("femnist_cnn")) == femnist
    resnet = n_params(build("resnet20"))
    assert resnet == 272_474 and abs(resnet - 0.27e6) < 0.01e6
    lstm = 80 * 8 + (4 * 256 * (8 + 256) + 2 * 4 * 256) + (4 * 256 * 512 + 2 * 4 * 256) + (256 * 80 + 80)
    assert n_params(build("shakespeare_lstm")) == lstm
    assert n_params(build("logreg")) == 60 * 5 + 5
    assert n_params(build("mlp")) == 784 * 32 + 32 + 32 * 10 + 10


def test_celeba_pooling_is_tf_same():
    model = build("celeba_cnn")
    assert model.pooled_hw == (6, 6) and model.fc.in_features == 6 * 6 * 32 == 1152
    feats = model.features(make_input("celeba_cnn").float())
    assert feats.shape == (3, 32, 6, 6)


def test_fmnist_flatten_is_2304():
    model = build("fmnist_cnn")
    feats = model.layer2(model.layer1(make_input("fmnist_cnn")))
    assert feats.shape == (3, 64, 6, 6) and model.fc1.in_features == 2304


@pytest.mark.parametrize("name", sorted(SPECS))
def test_init_is_deterministic_and_ignores_global_rng(name):
    shape, num_classes, _ = SPECS[name]
    torch.manual_seed(1)
    a = build_model(name, shape, num_classes, gen(7)).state_dict()
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    b = build_model(name, shape, num_classes, gen(7)).state_dict()
    assert torch.equal(torch.get_rng_state(), before), "build_model must not touch the global RNG"
    c = build_model(name, shape, num_classes, gen(8)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())


def test_reset_parameters_default_distributions():
    g = gen(3)
    net = nn.Sequential(nn.Linear(100, 50), nn.Conv2d(4, 8, 3), nn.LSTM(8, 16), nn.Embedding(10, 4),
                        nn.BatchNorm2d(8))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(123.0)
    reset_parameters(net, g)
    lin, conv, lstm, emb, bn = net
    assert lin.weight.abs().max() <= 1 / math.sqrt(100) and lin.bias.abs().max() <= 1 / math.sqrt(100)
    assert lin.weight.std() > 0.5 / math.sqrt(3 * 100)  # U(-1/sqrt(fan_in), ..) has std 1/sqrt(3 fan_in)
    assert conv.weight.abs().max() <= 1 / math.sqrt(36) and conv.bias.abs().max() <= 1 / math.sqrt(36)
    assert all(p.abs().max() <= 0.25 for p in lstm.parameters())
    assert abs(emb.weight.std().item() - 1.0) < 0.5
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="Odd"):
        reset_parameters(nn.Sequential(Odd()), g)


def flat_state(model):
    """One flat float vector of the model's floating tensors and named views into it (like params.py)."""
    items = [(k, v) for k, v in list(model.named_parameters()) + list(model.named_buffers()) if v.is_floating_point()]
    vec = torch.cat([v.detach().reshape(-1) for _, v in items]).clone()
    views, pos = {}, 0
    for k, v in items:
        views[k] = vec[pos:pos + v.numel()].view(v.shape)
        pos += v.numel()
    return vec, views


@pytest.mark.parametrize("name", sorted(SPECS))
def test_functional_call_on_flat_views_matches_module(name):
    source, target = build(name, seed=1), build(name, seed=2)
    x, y = make_input(name), torch.tensor([0, 1, 1])
    _, views = flat_state(source)
    leaves = {k: v.detach().requires_grad_(True) if k in dict(source.named_parameters()) else v
              for k, v in views.items()}
    set_dropout_generator(source, gen(5))
    set_dropout_generator(target, gen(5))
    out_module = source(x)
    out_func = functional_call(target, leaves, (x,), strict=False)
    assert torch.allclose(out_module, out_func, atol=1e-5)
    F.cross_entropy(out_module, y).backward()
    F.cross_entropy(out_func, y).backward()
    for k, p in source.named_parameters():
        assert torch.allclose(p.grad, leaves[k].grad, atol=1e-5), k
    # The target's own weights are untouched: functional_call really used the views.
    assert not torch.allclose(target.eval()(x), source.eval()(x))


def test_lstm_functional_call_after_weights_change_in_place():
    model = build("shakespeare_lstm")
    x = make_input("shakespeare_lstm")
    vec, views = flat_state(model)
    before = functional_call(model, views, (x,)).detach()
    vec.mul_(0.5)  # an SGD-like in-place change of the underlying vector must be seen
    after = functional_call(model, views, (x,)).detach()
    reference = build("shakespeare_lstm")
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.5)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, reference(x), atol=1e-6)


def test_gen_dropout():
    drop = GenDropout(0.25)
    x = torch.ones(4000)
    with pytest.raises(RuntimeError, match="set_dropout_generator"):
        drop(x)
    drop.generator = gen(1)
    a = drop(x)
    drop.generator = gen(1)
    assert torch.equal(a, drop(x))
    assert torch.equal(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs((a == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop.eval()(x), x)
    model = build("fmnist_cnn")
    assert set_dropout_generator(model, None) == 1
    model.eval()
    model(make_input("fmnist_cnn"))  # eval needs no generator


def test_celeba_batch_norm_always_train_option():
    x = make_input("celeba_cnn")
    model = build("celeba_cnn")
    assert len(list(model.buffers())) == 0
    assert torch.allclose(model.train()(x), model.eval()(x))  # LEAF: batch statistics also at test time
    classic = build("celeba_cnn", bn_always_train=False)
    assert len(list(classic.buffers())) == 12
    assert not torch.allclose(classic.train()(x), classic.eval()(x))


def test_logreg_leaf_sigmoid_and_lstm_forget_bias():
    x = make_input("logreg")
    plain, leaf = build("logreg", seed=4), build("logreg", seed=4, leaf_sigmoid=True)
    assert torch.allclose(leaf(x), torch.sigmoid(plain(x)))
    a, b = build("shakespeare_lstm"), build("shakespeare_lstm", forget_bias=1.0)
    assert torch.allclose(b.lstm.bias_ih_l1[256:512], a.lstm.bias_ih_l1[256:512] + 1)
    assert torch.equal(b.lstm.bias_ih_l1[:256], a.lstm.bias_ih_l1[:256])


def test_errors_name_model_and_expectation():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*femnist_cnn"):
        build_model("vgg", (1, 28, 28), 10, gen(0))
    with pytest.raises(ValueError, match=r"femnist_cnn.*\(1, 28, 28\)"):
        build_model("femnist_cnn", (3, 32, 32), 62, gen(0))
    with pytest.raises(ValueError, match=r"resnet20.*\(3, 32, 32\)"):
        build_model("resnet20", (1, 28, 28), 10, gen(0))
    with pytest.raises(ValueError, match="celeba_cnn"):
        build_model("celeba_cnn", (84, 84, 3), 2, gen(0))
    with pytest.raises(ValueError, match="shakespeare_lstm"):
        build_model("shakespeare_lstm", (80, 8), 80, gen(0))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("logreg", (60,), 1, gen(0))
    with pytest.raises(ValueError, match="options"):
        build_model("mlp", (784,), 10, gen(0), leaf_sigmoid=True)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_overfits_tiny_separable_problem(name):
    g = gen(11)
    d, k, n = (60, 5, 100) if name == "logreg" else (784, 10, 100)
    centers = 3 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    x = centers[y] + 0.5 * torch.randn(n, d, generator=g)
    model = build_model(name, (d,), k, gen(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() >= 0.95
