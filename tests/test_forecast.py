"""The forecast of a run's wait covers every phase and is corrected by the steps as they come."""
import pytest

from lune_core.forecast import DEFAULT_ASK_SECONDS, DEFAULT_STEP_SECONDS, Forecast, Pace


def step(n, total, elapsed, stopped=None):
    return {"step": n, "total_steps": total, "elapsed": elapsed, "stopped": stopped}


def test_before_training_the_forecast_counts_asking_twice_and_every_step():
    f = Forecast(prompts=100, steps=30, pace=Pace(ask=0.5, step=4.0))
    assert f.left("preparing", 0.0) == pytest.approx(50 + 120 + 50)
    # the base's answers came from its cache: preparing ends early, the rest stands
    assert f.left("preparing", 60.0) == pytest.approx(120 + 50)


def test_during_training_the_runs_own_steps_replace_the_pace():
    f = Forecast(prompts=100, steps=30, pace=Pace(ask=0.5, step=4.0))
    assert f.left("training", 30.0, step(5, 30, 50.0)) == pytest.approx(25 * 10.0 + 50)
    # an early stop: only the questions are left
    assert f.left("training", 30.0, step(10, 30, 100.0, stopped="early stop")) == pytest.approx(50)
    assert f.left("evaluating", 130.0, step(10, 30, 100.0), training_ended=110.0) == pytest.approx(30)
    assert f.left("evaluating", 500.0, step(10, 30, 100.0), training_ended=110.0) == 0.0


def test_the_pace_is_what_a_finished_run_measured_or_the_defaults():
    report = {"phases": {"preparing": 20.0, "training": 40.0, "evaluating": 66.0, "prompts": 110},
              "steps": [{}] * 10}
    assert Pace.of(report) == Pace(ask=0.6, step=4.0)
    assert Pace.of({"steps": []}) == Pace(DEFAULT_ASK_SECONDS, DEFAULT_STEP_SECONDS)
