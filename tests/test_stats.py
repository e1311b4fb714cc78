"""clapkit.stats: exact binomial tails, Wilson intervals, the t distribution and the paired t-test, against closed
forms, published table values and (a test-only dependency) scipy."""

import math

import pytest

from clapkit.stats import (
    THREE_SIGMA, accuracy_claim, binomial_tail, exact_task_claims, paired_t_test, regularized_incomplete_beta,
    student_t_cdf, student_t_quantile, wilson_interval,
)  # fmt: skip


def test_binomial_tail_hand_computed():
    # P(X >= 8 | 10, 1/2) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = (45 + 10 + 1) / 1024
    assert binomial_tail(8, 10, 0.5) == pytest.approx(56 / 1024, rel=1e-13)
    assert binomial_tail(1, 20, 0.1) == pytest.approx(1 - 0.9 ** 20, rel=1e-13)
    assert binomial_tail(20, 20, 0.1) == pytest.approx(1e-20, rel=1e-12)
    # P(X >= 3 | 5, 1/6) = C(5,3) 5^2 / 6^5 + C(5,4) 5 / 6^5 + 1 / 6^5 = (250 + 25 + 1) / 7776
    assert binomial_tail(3, 5, 1 / 6) == pytest.approx(276 / 7776, rel=1e-13)
    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(1, 10, 0.0) == 0.0 and binomial_tail(10, 10, 1.0) == 1.0
    # the far tail is not rounded to 0: 150 of 150 at chance 1/978
    assert binomial_tail(150, 150, 1 / 978) == pytest.approx(math.exp(-150 * math.log(978)), rel=1e-10)


def test_binomial_tail_fractional_successes_interpolate_through_the_incomplete_beta():
    # at integer k the incomplete beta I_p(k, n - k + 1) is the tail itself
    for k in (1, 3, 7, 10):
        assert regularized_incomplete_beta(k, 10 - k + 1, 0.3) == pytest.approx(binomial_tail(k, 10, 0.3), rel=1e-12)
    # a tie's shared credit (2.5 successes) lands between the tails at 2 and 3
    assert binomial_tail(3, 10, 0.3) < binomial_tail(2.5, 10, 0.3) < binomial_tail(2, 10, 0.3)


def test_binomial_tail_matches_scipy():
    from scipy.stats import binom

    for n, p in [(10, 0.5), (73, 1 / 7), (150, 1 / 151), (150, 0.54), (1000, 0.01), (3000, 0.3)]:
        for k in sorted({1, 2, int(n * p), int(n * p) + 3, n // 2, n}):
            assert binomial_tail(k, n, p) == pytest.approx(binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300), (n, p, k)


def test_wilson_interval_known_values():
    # the textbook values: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 10/10 -> [0.7225, 1]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), abs=1e-6)
    assert hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 81 of 263 (Newcombe 1998, table II: 0.2553 to 0.3662)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    lo99, hi99 = wilson_interval(81, 263, confidence=0.99)
    assert lo99 < 0.2553 and hi99 > 0.3662
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_t_distribution_closed_forms_tables_and_scipy():
    from scipy import stats

    for t in (-30.0, -2.5, -0.3, 0.0, 0.7, 1.5752, 4.0, 100.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)
        for df in (3, 5, 9.5, 30, 1000):
            assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-300), (t, df)
    # critical values of the printed tables (3 decimals), and scipy's to 1e-10
    for q, df, printed in [(0.975, 2, 4.303), (0.975, 10, 2.228), (0.95, 5, 2.015), (0.025, 4, -2.776)]:
        assert round(student_t_quantile(q, df), 3) == printed
        assert student_t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-10)
    assert student_t_cdf(math.inf, 3) == 1.0 and student_t_cdf(-math.inf, 3) == 0.0


def test_paired_t_test_by_hand():
    # differences 1, 2, 3: mean 2, sample std 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df 2;
    # two-sided p = 1 - t / sqrt(2 + t^2) (the df = 2 closed form) = 1 - sqrt(6 / 7)
    r = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (r.pairs, r.df, r.mean_difference, r.std_difference) == (3, 2, 2.0, 1.0)
    assert r.t == pytest.approx(2 * math.sqrt(3)) and r.p_value == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-12)
    half = student_t_quantile(0.975, 2) / math.sqrt(3)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert r.ci95 == pytest.approx((2 - half, 2 + half))
    # the 2026-11-27 grid's headline (reports/ablations-2026-11-27.json): HTSAT-22 minus HTSAT per seed
    from scipy import stats

    a, b = [0.2276, 0.2256, 0.2246], [0.2156, 0.2273, 0.2070]
    r = paired_t_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert r.t == pytest.approx(ref.statistic, rel=1e-10) and r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert paired_t_test([1.0, 2.0], [0.5, 1.5]).p_value == 0.0  # equal differences: no spread
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_t_test([1.0], [0.0])


def test_accuracy_claim_and_the_pretraining_claims():
    assert THREE_SIGMA == pytest.approx(0.0013499, abs=1e-7)
    c = accuracy_claim(76, 100, 0.5)
    assert c["ci95"] == pytest.approx(list(wilson_interval(76, 100)), abs=1e-4)
    assert c["p_value"] == pytest.approx(binomial_tail(76, 100, 0.5), rel=1e-2) and c["significant"]
    assert not accuracy_claim(13, 100, 0.1)["significant"]  # 13 % against 10 %: p = 0.20
    # instrument (metrics/pretrain.json): 4 of 150 right, 151 classes, the commonest training answer never right:
    # the audio-blind null is a uniform guess, and 4 correct where 1 is expected is not 3 sigma (p = 0.018)
    claims = exact_task_claims(4, 150, 1 / 151, 0.0)
    assert claims["audio_blind_null_rate"] == round(1 / 151, 4)
    assert claims["p_value_chance"] == claims["p_value_audio_blind"]
    assert claims["p_value_chance"] == pytest.approx(binomial_tail(4, 150, 1 / 151), rel=1e-2)
    assert 0.01 < claims["p_value_chance"] < 0.03 and not claims["significant"] and not claims["above_audio_blind"]
    # gender: 144 of 150 against chance 0.5 and the commonest answer's 0.54
    claims = exact_task_claims(144, 150, 0.5, 0.54)
    assert claims["significant"] and claims["above_audio_blind"] and claims["ci95"][0] > 0.9


@pytest.mark.slow  # executes a stage notebook (a Jupyter kernel, 2-15 s)
def test_pretrain_notebook_shows_wilson_intervals_and_exact_p_values(tmp_path):
    """notebooks/02_pretrain.ipynb on a metrics/pretrain.json fixture: each task's interval and both exact tests,
    and where the stage's normal-approximation flags differ from them."""
    import json

    from clapkit.notebooks import run_notebook

    def task(accuracy, clips, classes, blind, significant, above_blind):
        return {"accuracy": accuracy, "chance": round(1 / classes, 4), "free_accuracy": accuracy, "classes": classes,
                "clips": clips, "answer_seen_in_train": 1.0, "significant": significant, "audio_blind": blind,
                "above_audio_blind": above_blind}

    # instrument as in the 2400-step run: 4 of 150, 151 classes, blind answer never right; the normal
    # approximation called it above both, the exact tests do not (p = 0.018 against the uniform guess)
    metrics = {"mode": "all", "num_tasks": 2, "steps": 10, "mean_accuracy": 0.4933, "mean_chance": 0.2533,
               "tasks_significant": 2, "tasks_above_audio_blind": 2, "final_loss": 1.0,
               "tasks": {"gender": task(0.96, 150, 2, 0.54, True, True),
                         "instrument": task(0.0267, 150, 151, 0.0, True, True)}}
    (tmp_path / "out").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "out" / "config.json").write_text(json.dumps({
        "mode": "all", "model_config": "test", "steps": 10, "tasks": ["gender", "instrument"],
        "prompts": {"gender": "question: who speaks? answer:", "instrument": "question: what plays? answer:"},
        "output_vocab_size": 100}))
    (tmp_path / "out" / "generations.json").write_text("[]")
    (tmp_path / "loss.csv").write_text("step,loss,gender,instrument\n5,2.0,1.5,2.5\n10,1.0,0.8,1.2\n")
    out = run_notebook("notebooks/02_pretrain.ipynb", tmp_path / "02.ipynb",
                       {"out_dir": str(tmp_path / "out"), "metrics_path": str(tmp_path / "metrics.json"),
                        "loss_log": str(tmp_path / "loss.csv")})
    text = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                   for o in c.get("outputs", []))
    lo, hi = wilson_interval(144, 150)
    assert f"[{lo:.3f}, {hi:.3f}]" in text and "Traceback" not in text
    p = exact_task_claims(4, 150, 0.0066, 0.0)["p_value_chance"]
    assert f"{p:9.2g}" in text and 0.01 < p < 0.03
    assert "1 of 2 tasks above chance, 1 above the audio-blind answer" in text
    assert "differ on: instrument (True / True)" in text
