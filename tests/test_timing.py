"""Client speed models: the paper's exponential classes, uniform, per-client log-normal means, trace files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qafl_core.config import RunConfig
from qafl_core.rng import torch_generator
from qafl_core.timing import ClientClocks, lognormal_means, read_trace


def exp_block(seed: int, i: int, mean: float, n: int = 256) -> list[float]:
    return (torch.empty(n, dtype=torch.float64).exponential_(1.0, generator=torch_generator(seed, "speed", i))
            * mean).tolist()


def test_exponential_is_the_papers_two_classes():
    c = ClientClocks(10, "exponential", 0.3, 2.0, 8.0, seed=4)
    assert c.is_slow == [True] * 3 + [False] * 7 and c.means == [8.0] * 3 + [2.0] * 7
    assert [c.draw(0) for _ in range(5)] == exp_block(4, 0, 8.0)[:5]
    assert c.draw_sum(5, 3) == pytest.approx(sum(exp_block(4, 5, 2.0)[:3]), abs=0, rel=1e-15)


def test_lognormal_means_by_hand_and_exponential_steps():
    c = ClientClocks(6, "lognormal", 0.3, 2.0, 8.0, seed=1, speed_sigma=0.5)
    for i in range(6):
        z = torch.empty(1, dtype=torch.float64).normal_(generator=torch_generator(1, "speed_mean", i))
        assert c.means[i] == 2.0 * math.exp(0.5 * float(z))
    assert [c.draw(3) for _ in range(300)] == exp_block(1, 3, c.means[3]) + exp_block(1, 3, c.means[3], 300)[256:]
    median = float(np.median(c.means))
    assert c.is_slow == [m > median for m in c.means] and sum(c.is_slow) == 3
    assert lognormal_means(4, 3.0, 0.0, seed=1) == [3.0] * 4
    # a client's mean depends on (seed, client) only, not on how many clients there are
    assert lognormal_means(3, 2.0, 0.5, seed=1) == c.means[:3]


def test_lognormal_median_is_fast_mean():
    means = lognormal_means(2001, 2.0, 1.0, seed=0)
    assert abs(math.log(float(np.median(means)) / 2.0)) < 0.1
    assert np.std(np.log(means)) == pytest.approx(1.0, abs=0.05)


def write(tmp_path, text: str, name: str = "trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trace_rows_exponential_lognormal_constant(tmp_path):
    p = write(tmp_path, "client,mean_step_time,std_step_time\n1,8.0,4.0\n0,2.0,\n2,3.0,0\n3,1.0,\n")
    assert read_trace(p, 3) == [(2.0, None), (8.0, 4.0), (3.0, 0.0)]
    c = ClientClocks(3, "trace", 0.3, 2.0, 8.0, seed=2, trace=str(p))
    assert c.means == [2.0, 8.0, 3.0] and c.is_slow == [False, True, False]  # median 3
    assert [c.draw(0) for _ in range(4)] == exp_block(2, 0, 2.0)[:4]
    s2 = math.log(1 + (4.0 / 8.0) ** 2)
    z = torch.empty(256, dtype=torch.float64).normal_(generator=torch_generator(2, "speed", 1))
    assert [c.draw(1) for _ in range(4)] == torch.exp(math.log(8.0) - s2 / 2 + math.sqrt(s2) * z).tolist()[:4]
    assert [c.draw(2) for _ in range(3)] == [3.0, 3.0, 3.0] and 2 not in c._gens
    many = np.array([c.draw(1) for _ in range(40000)])
    assert many.mean() == pytest.approx(8.0, rel=0.03) and many.std() == pytest.approx(4.0, rel=0.05)


def test_trace_without_std_column_and_state_round_trip(tmp_path):
    p = write(tmp_path, "mean_step_time,client\n5,0\n6,1\n")
    c = ClientClocks(2, "trace", 0.3, 2.0, 8.0, seed=0, trace=str(p))
    first = [c.draw(1) for _ in range(3)]
    state = c.state_dict()
    rest = [c.draw(1) for _ in range(300)]
    d = ClientClocks(2, "trace", 0.3, 2.0, 8.0, seed=0, trace=str(p))
    d.load_state_dict(state)
    assert first == exp_block(0, 1, 6.0)[:3] and [d.draw(1) for _ in range(300)] == rest


@pytest.mark.parametrize("text, needle", [
    ("", "line 1: the header needs columns 'client' and 'mean_step_time'"),
    ("client,mean\n0,1\n", "line 1: the header needs columns"),
    ("client,mean_step_time,device\n0,1,a\n", "line 1, column 'device': unknown or repeated column"),
    ("client,mean_step_time\n0,2\n1,fast\n",
     "line 3, column 'mean_step_time': expected a finite number > 0, got 'fast'"),
    ("client,mean_step_time\n0,0\n", "line 2, column 'mean_step_time': expected a finite number > 0, got '0'"),
    ("client,mean_step_time\n0,nan\n", "line 2, column 'mean_step_time'"),
    ("client,mean_step_time,std_step_time\n0,2,-1\n", "line 2, column 'std_step_time': expected a finite number >= 0"),
    ("client,mean_step_time\nzero,2\n", "line 2, column 'client': expected an integer >= 0, got 'zero'"),
    ("client,mean_step_time\n0,2\n0,3\n", "line 3, column 'client': client 0 is listed twice"),
    ("client,mean_step_time\n0,2\n2,3\n", "column 'client': clients must be 0..1 (one row each); missing [1]"),
    ("client,mean_step_time\n0,2,7\n", "line 2: 3 fields, the header has 2"),
    ("client,mean_step_time\n0,2\n1,2\n", "has 2 clients but the run has 3"),
])
def test_bad_trace_files_name_file_line_and_column(tmp_path, text, needle):
    p = write(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError) as exc:
        read_trace(p, 3)
    assert str(exc.value).startswith(str(p)) and needle in str(exc.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv: timing_trace file not found"):
        ClientClocks(2, "trace", 0.3, 2.0, 8.0, seed=0, trace=str(tmp_path / "nope.csv"))


def test_trace_accepts_a_byte_order_mark(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("client,mean_step_time\n0,2.5\n".encode("utf-8-sig"))
    assert read_trace(p, 1) == [(2.5, None)]


@pytest.mark.parametrize("kw, needle", [
    (dict(timing="lognormal"), "speed_sigma: timing: lognormal needs speed_sigma"),
    (dict(timing="lognormal", speed_sigma=-0.5), "speed_sigma: must be >= 0"),
    (dict(speed_sigma=0.5), "speed_sigma: only used with timing: lognormal"),
    (dict(timing="trace"), "timing_trace: timing: trace needs the path of a CSV file"),
    (dict(timing_trace="t.csv"), "timing_trace: only used with timing: trace"),
    (dict(timing="trace", timing_trace="t.csv", speed_correction="estimate"), "speed_correction: estimate is not available"),
    (dict(timing="gamma"), "timing: unknown value 'gamma'"),
])
def test_timing_keys_are_validated(kw, needle):
    with pytest.raises(ValueError) as exc:
        RunConfig(**kw)
    assert str(exc.value).startswith(needle)


def test_runs_with_lognormal_and_trace_clocks_are_deterministic(tmp_path):
    from qafl_core.runner import build_simulation, run

    p = write(tmp_path, "client,mean_step_time,std_step_time\n" + "".join(f"{i},{1 + i},{i / 2}\n" for i in range(6)))
    base = dict(dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=6, clients_per_round=2, sit=1.0,
                time_limit=20.0, eval_every=10.0, progress=False)
    for extra in (dict(timing="lognormal", speed_sigma=1.0), dict(timing="trace", timing_trace=str(p))):
        cfg = RunConfig(**base, **extra)
        assert build_simulation(cfg).clocks.timing == extra["timing"]
        a, b = run(cfg), run(cfg)
        assert a.equals(b) and (a.split == "test").any()
    assert build_simulation(RunConfig(**base, timing="trace", timing_trace=str(p))).clocks.means == \
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
