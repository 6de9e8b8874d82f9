"""ml.profile: latency measured so that a comparison holds on a machine whose speed drifts."""


def test_paired_latency_alternates_the_two_models_and_reports_each_rounds_ratio(tiny_model_file, smear_folder):
    from ml.predict import Predictor
    from ml.profile import paired_latency

    image = next((smear_folder / "Pre").iterdir())
    model = Predictor(tiny_model_file)
    paired = paired_latency(model, model, image, rounds=3, runs=5)
    assert len(paired["ratios"]) == len(paired["ms"]) == len(paired["reference_ms"]) == 3
    assert paired["ratios"] == [m / r for m, r in zip(paired["ms"], paired["reference_ms"])]
    assert sorted(paired["ratios"])[1] == paired["median_ratio"]
