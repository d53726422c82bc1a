"""End-to-end: every ``nsf spectrum <instrument> --quick`` writes its JSON and PNGs and prints a summary."""
import json
import os

import pytest

from nsf_lab.cli import main

pytestmark = pytest.mark.slow

EXPECTED = {
    "response": ("response.json", ["response_gain_vs_f.png", "response_gain_vs_r.png", "response_transfer.png",
                                   "response_cyclic.png"]),
    "fprinciple": ("fprinciple.json", ["fprinciple_heatmap_equal.png", "fprinciple_matched_equal.png"]),
    "filtering": ("filtering.json", ["filtering_digits.png"]),
    "alignment": ("alignment.json", ["alignment_digits.png"]),
}


def assert_runs_at_the_tuners_choice(o: dict) -> None:
    """The LR an optimizer's seed runs use is the tuner's choice: the lowest mean score among every LR it tried
    (ties: the lowest LR), as recorded in its decision."""
    scores = {lr: tuple(score) for lr, score in o["tuning"]["scores"]}
    assert len(scores) >= 3  # a search took place: not one preset LR
    assert o["lr"] == o["tuning"]["lr"] == min(sorted(scores), key=scores.__getitem__)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("spectrum"))


@pytest.mark.parametrize("instrument", list(EXPECTED))
def test_quick_mode_end_to_end(instrument, out_dir, capsys):
    assert main(["spectrum", instrument, "--quick", "--out", out_dir, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"[{instrument}] wrote" in printed
    js, pngs = EXPECTED[instrument]
    with open(os.path.join(out_dir, js)) as fh:
        data = json.load(fh)
    assert data["settings"]["quick"] is True
    for png in pngs:
        path = os.path.join(out_dir, png)
        assert os.path.getsize(path) > 5000
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    if instrument == "response":
        s = data["summary"]
        assert abs(s["nsf-fixed:p=0"]["noise=0"]["gain_hf_mean"][1] - 1) < 0.01
        assert s["adam"]["noise=0"]["max_rel_dev"] < 0.02
    elif instrument == "fprinciple":
        from nsf_lab.spectral.fprinciple import train_run

        st = data["settings"]
        for label, o in data["results"]["equal"].items():
            assert_runs_at_the_tuners_choice(o)
            assert len(o["runs"]) == len(st["seeds"])
            again = train_run(label, o["lr"], profile="equal", seed=st["seeds"][0], ks=st["ks"], n=st["n"],
                              steps=st["steps"], eval_every=st["eval_every"], width=st["width"], depth=st["depth"])
            assert again["loss"] == o["runs"][0]["loss"]  # the seed runs were trained at that LR
    else:
        r = data["results"]["digits"]
        if instrument == "filtering":
            assert 0.2 <= r["delta"]["share"] <= 0.8
        for o in r["optimizers"].values():
            assert_runs_at_the_tuners_choice(o)
            assert len(o["histories"]) == len(data["settings"]["seeds"])


def test_optimizer_option_and_bad_instrument(out_dir, capsys):
    assert main(["spectrum", "response", "--quick", "--out", out_dir, "--no-progress",
                 "--optimizers", "nsf-fixed:p=-0.25"]) == 0
    with open(os.path.join(out_dir, "response.json")) as fh:
        data = json.load(fh)
    assert list(data["results"]) == ["nsf-fixed:p=-0.25"]
    with pytest.raises(SystemExit):
        main(["spectrum", "nonsense", "--out", out_dir])
