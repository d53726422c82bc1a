"""`nsf spectrum ... --workers N`: the seeds of an instrument run in a process pool and give the same results."""
from nsf_lab.experiment.tuner import Grid
from nsf_lab.spectral import alignment, fprinciple


def test_alignment_seeds_in_two_workers_equal_one_worker():
    kw = dict(optimizers=["adam"], quick=True, datasets=["digits"], seeds=[0, 1], progress=False,
              lr_grid=Grid(1e-3, 1e-2, 0.5))
    one = alignment.run(workers=1, **kw)["results"]["digits"]["optimizers"]
    two = alignment.run(workers=2, **kw)["results"]["digits"]["optimizers"]
    assert one.keys() == two.keys()
    for k in one:
        assert one[k]["lr"] == two[k]["lr"]
        assert one[k]["histories"] == two[k]["histories"] and one[k]["diverged"] == two[k]["diverged"]
        assert len(one[k]["histories"]) == 2 and one[k]["histories"][0] != one[k]["histories"][1]


def test_fprinciple_seeds_in_two_workers_equal_one_worker():
    kw = dict(optimizers=["adam"], quick=True, seeds=[0, 1], steps=40, progress=False, lr_grid=Grid(1e-3, 1e-2, 0.5))
    one = fprinciple.run(workers=1, **kw)["results"]["equal"]["adam"]["runs"]
    two = fprinciple.run(workers=2, **kw)["results"]["equal"]["adam"]["runs"]
    assert one == two and one[0] != one[1]
