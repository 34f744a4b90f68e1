import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from ray_apps.segments.model import SEGMENT_NAMES, RFMSegmenter, name_segment


def _planted(n_per=300, seed=0):
    rng = np.random.default_rng(seed)
    groups = [  # (recency, frequency, monetary) centres, far apart in log space
        (5, 20, 8000),
        (150, 1, 60),
        (20, 6, 2000),
    ]
    rows, labels = [], []
    for g, (r, f, m) in enumerate(groups):
        rows.append(
            np.column_stack(
                [
                    rng.lognormal(np.log(r), 0.2, n_per),
                    np.maximum(1, rng.lognormal(np.log(f), 0.15, n_per)),
                    rng.lognormal(np.log(m), 0.2, n_per),
                ]
            )
        )
        labels += [g] * n_per
    return pd.DataFrame(np.vstack(rows), columns=["recency_days", "frequency", "monetary"]), np.array(labels)


def test_recovers_planted_groups_and_names_them():
    X, truth = _planted()
    model = RFMSegmenter(n_clusters=3, random_state=0).fit(X)
    assert adjusted_rand_score(truth, model.labels_) > 0.95
    champion = model.predict(pd.DataFrame([[4, 25, 9000]], columns=X.columns))[0]
    lapsed = model.predict(pd.DataFrame([[160, 1, 50]], columns=X.columns))[0]
    assert model.names_[champion] == "important-value"
    assert model.names_zh_[champion] == "重要价值客户"
    assert model.names_[lapsed] == "general-recall"
    assert model.sizes_.sum() == len(X)


def test_predict_matches_kmeans_in_model_space():
    X, _ = _planted(seed=1)
    model = RFMSegmenter(n_clusters=3, random_state=0).fit(X)
    assert (model.predict(X) == model.kmeans_.predict(model.standardised(X))).all()
    # The numpy standardisation (the serving fast path) is the fitted scaler's.
    assert np.allclose(model.standardised(X), model.scaler_.transform(np.log1p(X)), rtol=0, atol=1e-12)


def test_name_rules_cover_all_eight_cells():
    names = {name_segment(np.array([r, f, m]))[0] for r in (-1, 1) for f in (-1, 1) for m in (-1, 1)}
    assert names == {en for en, _ in SEGMENT_NAMES.values()}
    assert name_segment(np.array([-0.5, 1.2, 0.8])) == ("important-value", "重要价值客户")
    assert name_segment(np.array([1.5, -0.2, 0.3])) == ("important-recall", "重要挽留客户")


def test_names_use_geometric_not_arithmetic_mean():
    """A few huge spenders must not make everyone else 'low value'."""
    rng = np.random.default_rng(3)
    whales = np.column_stack([rng.uniform(1, 5, 20), rng.uniform(30, 40, 20), rng.uniform(9e5, 1e6, 20)])
    mid = np.column_stack([rng.uniform(100, 140, 400), np.ones(400), rng.uniform(3000, 4000, 400)])
    low = np.column_stack([rng.uniform(100, 140, 400), np.ones(400), rng.uniform(20, 40, 400)])
    X = np.vstack([whales, mid, low])
    assert X[:, 2].mean() > 4000  # the arithmetic mean sits above every mid spender
    model = RFMSegmenter(n_clusters=3, random_state=0).fit(X)
    mid_label = model.predict(np.array([[120.0, 1.0, 3500.0]]))[0]
    assert model.names_[mid_label] == "important-recall"


def test_duplicate_cells_are_numbered():
    X, _ = _planted(seed=2)
    model = RFMSegmenter(n_clusters=6, random_state=0).fit(X)
    assert len(set(model.names_)) == 6


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[1.0, 2.0]]),
        np.array([[1.0, -2.0, 3.0]] * 5),
        np.array([[np.nan, 2.0, 3.0]] * 5),
    ],
)
def test_fit_validates_input(bad):
    with pytest.raises(ValueError):
        RFMSegmenter(n_clusters=2).fit(bad)


def test_init_only_stores_parameters():
    model = RFMSegmenter(n_clusters=1)  # validated in fit, not in __init__
    assert model.get_params()["n_clusters"] == 1
    with pytest.raises(ValueError, match="n_clusters"):
        model.fit(_planted()[0])
