"""UMAP panels: separation metrics on known geometry, and ``mimflow-lab umap`` redrawn from its files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mimflow_lab.cli import main
from mimflow_lab.umap import plot_umap, separation_metrics
from tests.test_features import make_checkpoint


def test_separation_metrics_on_known_geometry():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 6)) * 20
    separated = centres[labels] + rng.normal(size=(200, 6))
    m = separation_metrics(separated, separated[:, :2], labels)
    assert m["knn_accuracy"] == 100.0 and m["silhouette"] > 0.8
    shuffled = separation_metrics(separated, separated[:, :2], rng.permutation(labels))
    assert shuffled["knn_accuracy"] < 45.0 and shuffled["silhouette"] < 0.1  # chance is 25 %
    # trustworthiness: 1 for an embedding that keeps every neighbourhood, lower for a scrambled one
    flat = rng.normal(size=(200, 2))
    assert separation_metrics(flat, flat * 3.0 + 1.0, labels)["trustworthiness"] == pytest.approx(1.0)
    assert separation_metrics(flat, rng.permutation(flat), labels)["trustworthiness"] < 0.6


def test_umap_command_writes_metrics_and_coordinates(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "umap"
    main(["umap", ckpt, "--compare", "pixels", "--what", "latent", "--samples", "200", "--neighbors", "10",
          "--cache", str(tmp_path / "cache"), "--out", str(out)])
    result = json.loads((out / "umap.json").read_text())
    assert [p["label"] for p in result["panels"]] == ["mimflow (mask 0.4-0.6)", "raw pixels"]
    assert result["samples"] == 200 and result["pool"] == "flat"
    assert result["panels"][0]["dim"] == 8 * 4 and result["panels"][1]["dim"] == 16 * 16 * 3
    for p in result["panels"]:
        assert 0 <= p["knn_accuracy"] <= 100 and 0 <= p["trustworthiness"] <= 1
    # raw digit pixels cluster by class far better than chance
    assert result["panels"][1]["knn_accuracy"] > 80.0
    with np.load(out / result["embedding_file"]) as z:
        assert z["embedding_0"].shape == (200, 2) and np.bincount(z["labels_0"]).tolist() == [20] * 10
        np.testing.assert_array_equal(z["labels_0"], z["labels_1"])
    assert (out / "umap.png").is_file() and (out / "umap.pdf").is_file()
    # Figure 4 from the npz alone (no JSON) and from the JSON
    plot_umap(out / "umap.npz", tmp_path / "from_npz")
    plot_umap(out / "umap.json", tmp_path / "from_json")
    assert (tmp_path / "from_npz.png").stat().st_size > 10_000 and (tmp_path / "from_json.pdf").is_file()


@pytest.mark.parametrize("what", ["block:9", "bogus"])
def test_umap_refuses_bad_what_naming_its_own_option(tmp_path, capsys, what):
    ckpt = make_checkpoint(tmp_path / "m.pt")
    with pytest.raises(SystemExit) as e:
        main(["umap", ckpt, "--what", what, "--no-cache"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"--what: unknown depth '{what}'" in err and "--depths" not in err


@pytest.mark.parametrize("extra, needle", [
    (["--samples", "20", "--knn", "10"], "--knn 10: needs fewer than half of the 20 points"),
    (["--samples", "30", "--neighbors", "40"], "--neighbors 40: UMAP needs fewer neighbours than the 30 points"),
])
def test_neighbourhoods_larger_than_the_sample_are_refused_before_any_work(tmp_path, capsys, extra, needle):
    ckpt = make_checkpoint(tmp_path / "m.pt")
    with pytest.raises(SystemExit) as e:
        main(["umap", ckpt, *extra, "--no-cache", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out").exists()
