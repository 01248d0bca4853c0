"""The OOD guard's distance (edge/ood.py) is the Mahalanobis distance of the probabilistic-PCA
covariance convert/ood_reference.py fits; a bundle with the older full-covariance reference
(`whitening`) still scores as it did; the gate leaves out the OOD set of a declared modality."""
from __future__ import annotations

import numpy as np

from medge.convert.ood_reference import fit_reference, write_reference
from medge.edge.ood import OOD_FILE, OodGuard


def correlated_features(rng, n: int, dim: int = 40, rank: int = 6) -> np.ndarray:
    mixing = rng.normal(size=(rank, dim)) * np.linspace(4, 1, rank)[:, None]
    return rng.normal(size=(n, rank)) @ mixing + 0.3 * rng.normal(size=(n, dim)) + 2.0


def test_the_low_rank_distance_is_the_mahalanobis_distance_of_the_ppca_covariance(tmp_path):
    rng = np.random.default_rng(0)
    train, val = correlated_features(rng, 3000), correlated_features(rng, 500)
    reference = fit_reference(train, val, [], channels=1, components=6)
    mean = train.mean(axis=0)
    variances, directions = np.linalg.eigh(np.cov(train, rowvar=False))
    variances, directions = variances[::-1], directions[:, ::-1]
    noise = variances[6:].mean()
    # C = V diag(lambda) V^T + noise (I - V V^T): what PPCA says the training features look like.
    top = directions[:, :6]
    covariance = top @ np.diag(variances[:6]) @ top.T + noise * (np.eye(40) - top @ top.T)
    probes = np.concatenate([val[:20], correlated_features(rng, 20) * 1.5, rng.normal(size=(20, 40)) * 3])
    centred = probes - mean
    expected = np.einsum("nd,de,ne->n", centred, np.linalg.inv(covariance), centred)
    got = reference.guard().distances(probes)
    assert np.allclose(got, expected, rtol=2e-3), np.abs(got / expected - 1).max()
    # The threshold keeps the stated share of validation images, and what the bundle stores scores the same.
    assert 0.975 <= np.mean(reference.guard().distances(val) <= reference.threshold) <= 0.99
    write_reference(reference, tmp_path)
    with np.load(tmp_path / OOD_FILE) as arrays:
        stored = OodGuard(arrays["means"], arrays["basis"], reference.threshold, weights=arrays["weights"],
                          isotropic=float(arrays["isotropic"]))
    assert np.allclose(stored.distances(probes), got, rtol=1e-4)


def test_a_full_covariance_reference_scores_as_before():
    rng = np.random.default_rng(1)
    features = correlated_features(rng, 2000, dim=12, rank=3)
    means = np.stack([features[:1000].mean(0), features[1000:].mean(0)])
    precision = np.linalg.inv(np.cov(features, rowvar=False))
    whitening = np.linalg.cholesky(precision)
    guard = OodGuard(means, whitening, threshold=10.0)  # what from_bundle builds from an older ood.npz
    probe = features[:50]
    expected = np.min([np.einsum("nd,de,ne->n", probe - m, precision, probe - m) for m in means], axis=0)
    assert np.allclose(guard.distances(probe), expected, rtol=1e-3)


def test_a_model_declared_for_a_modality_is_not_measured_against_that_modality():
    from medge.convert.ood_check import OodLimits, _floors
    from medge.convert.ood_sets import ood_sets

    assert {"modality_ct", "modality_us"} <= set(ood_sets([], None))
    declared = ood_sets([], None, own_modalities=("us", "CT"))
    assert "modality_us" not in declared and "modality_ct" not in declared and "modality_mr" in declared
    # A miss on another modality's set names the way out for a model that is built for it.
    [failure] = _floors({"auroc": {"modality_mr": 0.6}, "test_acceptance": 0.99, "rank_agreement": {}}, OodLimits())
    assert "modality_mr 0.6000 < floor 0.9" in failure and "declare it with --modality" in failure
