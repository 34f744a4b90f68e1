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
        (30, 4, 600),
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


def test_name_rules_cover_all_eight_cells():
    ref = np.array([50.0, 3.0, 500.0])
    names = {
        name_segment(np.array([r, f, m]), ref)[0]
        for r in (10, 100)
        for f in (1, 9)
        for m in (100, 900)
    }
    assert names == {en for en, _ in SEGMENT_NAMES.values()}


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
